"""Load benchmark: many concurrent clients against ``verity serve --dev`` on the embedded stack.

The script starts its own server on a free loopback port with a fresh data dir
(embedded Postgres, the bundled embedder and the local llama.cpp server), ingests
``docs/`` into the default collection first, then, for each concurrency level,
runs that many asyncio ``httpx`` clients for a bounded time. Each client loops over
a fixed mix of requests: ``/v1/search``, ``/v1/query`` (plain and streamed),
``/v1/chat/completions`` and uploads to ``/v1/documents``. A separate probe asks
``/healthz`` four times a second throughout, from a process of its own with a new
connection each time, as an orchestrator's liveness probe does (timed inside the
clients' event loop, it would also count the time 128 busy clients keep that loop),
once on the API's port and once on the health port (``VERITY_SERVER__HEALTH_PORT``).
The clients stand in for callers on other machines, so on this one they run at a lower
CPU priority (``--nice``, 10 by default) than the service and the probe.

Per level it reports throughput, p50/p95/p99 latency per route, errors by status
and the ``/healthz`` latency. Requests still running when a level's time is up get
``--grace`` seconds to finish; those that do not are counted as ``unfinished``.

Run from the repository root::

    PYTHONPATH=. python bench/load.py                          # 1, 8 and 32 clients, 30 s each
    PYTHONPATH=. python bench/load.py --levels 1 8 32 128 --seconds 20 --json load.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = (
    "How do I start the server in development mode?",
    "What does hybrid search combine?",
    "How are API keys created?",
    "Which file formats can be ingested?",
    "What does the reranker do?",
    "How is the connection pool sized?",
)
# Each client walks this cycle (from its own offset): searches are the bulk of real traffic.
MIX = ("search", "search", "search", "query", "search", "query_stream", "chat", "search",
       "upload", "search")
PROBE_EVERY_S = 0.25


@dataclass
class Level:
    """What one concurrency level measured."""

    clients: int
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    healthz: list[float] = field(default_factory=list)  # the API's port
    healthz_port: list[float] = field(default_factory=list)  # VERITY_SERVER__HEALTH_PORT
    unfinished: int = 0

    def record(self, route: str, *, status: str, seconds: float) -> None:
        if status.startswith("2"):
            self.latencies.setdefault(route, []).append(seconds)
        else:
            self.errors[f"{route} {status}"] += 1

    @property
    def completed(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 1),
            "ok": self.completed,
            "throughput_rps": round(self.completed / self.seconds, 2) if self.seconds else 0.0,
            "routes": {route: percentiles(v) for route, v in sorted(self.latencies.items())},
            "errors": dict(sorted(self.errors.items())),
            "unfinished": self.unfinished,
            "healthz": percentiles(self.healthz),
            "healthz_port": percentiles(self.healthz_port),
        }


def percentiles(values: list[float]) -> dict[str, float]:
    """Count, p50, p95, p99 and max of ``values`` (seconds), in milliseconds."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"n": len(values), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 1)}


# --- The server ------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def verity_server(data_dir: Path, *, port: int, health_port: int, max_tokens: int,
                  keep_log: Path | None = None) -> Iterator[str]:
    """``verity serve --dev`` with ``docs/`` ingested, on ``port``; yields its URL. Its log
    is copied to ``keep_log`` when it stops."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERITY_")}
    env.update(VERITY_DATA_DIR=str(data_dir), VERITY_SERVER__RATE_LIMIT_PER_MINUTE="0",
               VERITY_LLM__MAX_TOKENS=str(max_tokens), HF_HUB_OFFLINE="1",
               VERITY_SERVER__HEALTH_PORT=str(health_port),
               PYTHONPATH=str(REPO))
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "verity.cli", "serve", "--dev", "--port",
                             str(port), "--ingest", str(REPO / "docs")], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc, log_path=data_dir / "serve.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        if keep_log is not None:
            shutil.copyfile(data_dir / "serve.log", keep_log)


def wait_ready(url: str, *, proc: subprocess.Popen[bytes], log_path: Path,
               timeout_s: float = 600) -> None:
    """Wait until ``/readyz`` answers 200.

    Raises:
        SystemExit: the server exited or was not ready in time; its log says why.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"verity serve exited (code {proc.returncode}); see {log_path}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"verity serve was not ready within {timeout_s:.0f}s; see {log_path}")


# --- The clients -----------------------------------------------------------------------------


def outcome(r: httpx.Response) -> str:
    """The status, and for an error its type, marked when it says when to retry.

    A full model queue shows as ``503 model_busy (Retry-After)``: a deliberate refusal.
    """
    if r.status_code < 400:
        return str(r.status_code)
    try:
        kind = r.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        kind = "?"
    return f"{r.status_code} {kind}" + (" (Retry-After)" if "retry-after" in r.headers else "")


async def send(client: httpx.AsyncClient, route: str, *, n: int) -> str:
    """One request of kind ``route`` (the ``n``-th of its client); returns its :func:`outcome`."""
    question = QUESTIONS[n % len(QUESTIONS)]
    if route == "search":
        r = await client.post("/v1/search", json={"query": question})
    elif route == "query":
        r = await client.post("/v1/query", json={"question": question})
    elif route == "query_stream":
        async with client.stream("POST", "/v1/query",
                                 json={"question": question, "stream": True}) as r:
            if r.status_code >= 400:
                await r.aread()
                return outcome(r)
            async for _ in r.aiter_lines():
                pass
    elif route == "chat":
        r = await client.post("/v1/chat/completions", json={
            "model": "default", "messages": [{"role": "user", "content": question}]})
    else:
        body = f"# Load note {n}-{time.time_ns()}\n\nThe load test wrote note {n}.\n".encode()
        r = await client.post("/v1/documents", data={"collection": "load-uploads"},
                              files=[("files", (f"note-{time.time_ns()}.md", body, "text/markdown"))])
    return outcome(r)


async def run_client(client: httpx.AsyncClient, level: Level, *, offset: int,
                     stop_at: float) -> None:
    """Send the mix, from ``offset``, until ``stop_at`` (loop time)."""
    loop = asyncio.get_running_loop()
    for n in itertools.count(offset):
        if loop.time() >= stop_at:
            return
        route = MIX[n % len(MIX)]
        started = loop.time()
        try:
            status = await send(client, route, n=n)
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.HTTPError as e:
            status = type(e).__name__
        level.record(route, status=status, seconds=loop.time() - started)


def probe_healthz(url: str) -> None:
    """Ask ``/healthz`` every ``PROBE_EVERY_S`` until killed; one line per probe on stdout:
    when it started (``time.time()``), the status (or the error's name) and the seconds it
    took."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    while True:
        at, started = time.time(), time.perf_counter()
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            status = str(response.status)
        except OSError as e:
            status = type(e).__name__
        finally:
            conn.close()
        took = time.perf_counter() - started
        print(at, status, took, flush=True)
        time.sleep(max(0.0, PROBE_EVERY_S - took))


class HealthzProber:
    """:func:`probe_healthz` in a process of its own for the whole run, at the priority the
    driver started with; :meth:`record` files its probes of a time span under a level."""

    def __init__(self, url: str, out: Any, *, route: str) -> None:
        self._out, self._route = out, route
        self._proc = subprocess.Popen([sys.executable, __file__, "--probe", url], stdout=out,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})

    def record(self, level: Level, *, since: float, until: float) -> None:
        self._out.seek(0)
        for line in self._out.read().splitlines():
            fields = line.split()
            if len(fields) == 3 and since <= float(fields[0]) < until:  # whole lines only
                level.record(self._route, status=fields[1], seconds=float(fields[2]))
        self._out.seek(0, os.SEEK_END)

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait()


async def run_level(url: str, probers: list[HealthzProber], *, clients: int, seconds: float,
                    grace_s: float, timeout_s: float) -> Level:
    """``clients`` concurrent clients for ``seconds``, then up to ``grace_s`` to finish."""
    level = Level(clients=clients)
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    since = time.time()
    await clients_for(url, level, clients=clients, seconds=seconds, grace_s=grace_s,
                      timeout_s=timeout_s, limits=limits)
    until = time.time()
    for prober in probers:
        prober.record(level, since=since, until=until)
    level.healthz = level.latencies.pop("healthz", [])
    level.healthz_port = level.latencies.pop("healthz_port", [])
    return level


async def clients_for(url: str, level: Level, *, clients: int, seconds: float, grace_s: float,
                      timeout_s: float, limits: httpx.Limits) -> None:
    """Run the clients of one level; see :func:`run_level`."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks = [asyncio.create_task(run_client(client, level, offset=i, stop_at=started + seconds))
                 for i in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=seconds + grace_s)
        for task in pending:
            task.cancel()
        level.unfinished = len(pending)
        level.seconds = loop.time() - started
        await asyncio.gather(*pending, return_exceptions=True)


# --- The report ------------------------------------------------------------------------------


def markdown(levels: list[dict[str, Any]]) -> str:
    """The levels as Markdown tables: one overall, one per route."""
    lines = ["| clients | ok | throughput (req/s) | errors | unfinished | /healthz p50 / p99 / "
             "max (ms), API port | the same, health port |",
             "|---:|---:|---:|---|---:|---|---|"]
    for lv in levels:
        errors = ", ".join(f"{k}: {v}" for k, v in lv["errors"].items()) or "none"
        api, own = (" / ".join(str(h.get(k)) for k in ("p50_ms", "p99_ms", "max_ms"))
                    for h in (lv["healthz"], lv["healthz_port"]))
        lines.append(f"| {lv['clients']} | {lv['ok']} | {lv['throughput_rps']} | {errors} | "
                     f"{lv['unfinished']} | {api} | {own} |")
    lines += ["", "| clients | route | n | p50 (ms) | p95 (ms) | p99 (ms) |",
              "|---:|---|---:|---:|---:|---:|"]
    for lv in levels:
        for route, p in lv["routes"].items():
            lines.append(f"| {lv['clients']} | {route} | {p['n']} | {p['p50_ms']} | "
                         f"{p['p95_ms']} | {p['p99_ms']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32],
                        help="concurrent clients, one level after another")
    parser.add_argument("--seconds", type=float, default=30.0, help="sending time per level")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="time for requests in flight to finish after a level")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length (tokens)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--nice", type=int, default=10,
                        help="how much lower the clients' CPU priority is than the service's "
                             "and the /healthz probe's (0: the same)")
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)  # the probe process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.probe:
        probe_healthz(args.probe)
        return
    results = []
    health_port = free_port()
    with tempfile.TemporaryDirectory(prefix="verity-load-") as tmp, \
            verity_server(Path(tmp), port=free_port(), health_port=health_port,
                          max_tokens=args.max_tokens, keep_log=args.server_log) as url, \
            tempfile.TemporaryFile("w+") as api_probes, \
            tempfile.TemporaryFile("w+") as own_probes:
        probers = [HealthzProber(url, api_probes, route="healthz"),
                   HealthzProber(f"http://127.0.0.1:{health_port}", own_probes,
                                 route="healthz_port")]
        # The clients stand in for callers on other machines: on this one they yield the CPU
        # to the service and the probe (both started above, at the driver's own priority).
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + args.nice)
        try:
            for clients in args.levels:
                level = asyncio.run(run_level(url, probers, clients=clients,
                                              seconds=args.seconds, grace_s=args.grace,
                                              timeout_s=args.timeout))
                results.append(level.summary())
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        finally:
            for prober in probers:
                prober.stop()
    report = {"levels": results, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
              "clients_nice": args.nice}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results))
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
