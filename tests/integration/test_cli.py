"""The ``verity`` command as a user runs it, in subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from core.llama_server import free_port
from tests.conftest import DOCS

pytestmark = pytest.mark.integration

VERITY = [sys.executable, "-m", "cli"]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERITY_")}
    env.update(VERITY_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", **extra)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(VERITY + args, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("command", [[], ["ingest"], ["serve"], ["ask"], ["status"], ["tune"],
                                     ["tune", "reranker"]])
def test_help(command: list[str], tmp_path: Path) -> None:
    result = _run([*command, "--help"], _env(tmp_path), timeout=60)
    assert result.returncode == 0 and "Usage" in result.stdout


def test_missing_model_file(tmp_path: Path) -> None:
    env = _env(tmp_path, VERITY_LLM__GGUF_PATH=str(tmp_path / "absent.gguf"))
    _assert_one_line_error(_run(["ask", "anything"], env), "cannot be read", "absent.gguf")


def test_corrupt_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a model" * 100)
    env = _env(tmp_path, VERITY_LLM__GGUF_PATH=str(bad))
    _assert_one_line_error(_run(["ask", "anything"], env), "not a GGUF file")


def test_occupied_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _run(["serve", "--port", str(port)], _env(tmp_path), timeout=60)
    _assert_one_line_error(result, f"127.0.0.1:{port}")


def test_unreachable_database(tmp_path: Path) -> None:
    env = _env(tmp_path, VERITY_STORE__DSN="postgresql://v:pw@127.0.0.1:1/v",
               VERITY_STORE__CONNECT_TIMEOUT_S="2")
    _assert_one_line_error(_run(["status"], env, timeout=60), "cannot connect to the database")


def test_invalid_setting(tmp_path: Path) -> None:
    env = _env(tmp_path, VERITY_RETRIEVAL__TOP_K="zero")
    _assert_one_line_error(_run(["status"], env, timeout=60), "retrieval.top_k")


def test_tune_reranker_on_a_missing_collection(tmp_path: Path) -> None:
    result = _run(["tune", "reranker", "--collection", "nothing-here"], _env(tmp_path), timeout=120)
    _assert_one_line_error(result, "'nothing-here' does not exist")
    assert not (tmp_path / "models" / "reranker").exists()


def test_cross_encoder_without_a_tuned_model_says_how_to_make_one(tmp_path: Path) -> None:
    env = _env(tmp_path, VERITY_RERANK__KIND="cross-encoder",
               VERITY_LLM__BASE_URL="http://127.0.0.1:1/v1")
    _assert_one_line_error(_run(["serve", "--port", str(free_port())], env, timeout=120),
                           "verity tune reranker")


def _processes_using(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(data_dir) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _serve(data_dir: Path, docs: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(VERITY + ["serve", "--port", str(port), "--ingest", str(docs)],
                            env=_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)


def _wait_healthy(proc: subprocess.Popen[str], port: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError("serve did not become healthy")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.slow
def test_serve_answers_restarts_without_reingesting_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    data_dir, docs = tmp_path / "data", tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    port = free_port()
    proc = _serve(data_dir, docs, port)
    try:
        _wait_healthy(proc, port)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/query", timeout=120,
                       json={"question": "How do I configure the database?"})
        body = r.json()
        assert body["status"] == "answered", body
        assert "docs/configuration.md" in {c["document"] for c in body["citations"]}
        assert _processes_using(data_dir), "postgres and llama.cpp should be running"
    finally:
        first_log = _stop(proc)
    assert proc.returncode == 0, first_log
    assert "0 unchanged" in first_log and "0 failed" in first_log
    time.sleep(1)
    assert _processes_using(data_dir) == []

    proc = _serve(data_dir, docs, port)
    try:
        _wait_healthy(proc, port)
    finally:
        second_log = _stop(proc)
    n_docs = len(list(docs.glob("*.md")))
    assert f"0 added, 0 updated, {n_docs} unchanged" in second_log, second_log
    assert "0 chunks written" in second_log
    time.sleep(1)
    assert _processes_using(data_dir) == []
