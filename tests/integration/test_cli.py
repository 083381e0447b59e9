"""The ``verity`` command as a user runs it, in subprocesses."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import DOCS
from tests.helpers import VERITY, cli_env, processes_using
from verity.backends.llama_server import free_port

pytestmark = pytest.mark.integration


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


@pytest.mark.parametrize("command", [[], ["ingest"], ["serve"], ["ask"], ["status"], ["worker"],
                                     ["reindex"], ["tune"], ["tune", "reranker"]])
def test_help(command: list[str], tmp_path: Path) -> None:
    result = _run([*command, "--help"], cli_env(tmp_path), timeout=60)
    assert result.returncode == 0 and "Usage" in result.stdout


def test_missing_model_file(tmp_path: Path) -> None:
    env = cli_env(tmp_path, VERITY_LLM__GGUF_PATH=str(tmp_path / "absent.gguf"))
    _assert_one_line_error(_run(["ask", "anything"], env), "cannot be read", "absent.gguf")


def test_corrupt_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a model" * 100)
    env = cli_env(tmp_path, VERITY_LLM__GGUF_PATH=str(bad))
    _assert_one_line_error(_run(["ask", "anything"], env), "not a GGUF file")


def test_occupied_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _run(["serve", "--port", str(port)], cli_env(tmp_path), timeout=60)
    _assert_one_line_error(result, f"127.0.0.1:{port}")


def test_unreachable_database(tmp_path: Path) -> None:
    env = cli_env(tmp_path, VERITY_STORE__DSN="postgresql://v:pw@127.0.0.1:1/v",
               VERITY_STORE__CONNECT_TIMEOUT_S="2")
    _assert_one_line_error(_run(["status"], env, timeout=60), "cannot connect to the database")


def test_invalid_setting(tmp_path: Path) -> None:
    env = cli_env(tmp_path, VERITY_RETRIEVAL__TOP_K="zero")
    _assert_one_line_error(_run(["status"], env, timeout=60), "retrieval.top_k")


def test_reindex_rebuilds_faiss_files_from_postgres(tmp_path: Path) -> None:
    import numpy as np

    from verity.backends.stores.database import Database
    from verity.backends.stores.pgvector_store import PgvectorStore
    from verity.core.settings import StoreSettings
    from verity.core.types import Chunk, Document, Section

    env = cli_env(tmp_path)
    assert "no collections to reindex" in _run(["reindex"], env).stdout
    vectors = np.eye(8, 16, dtype=np.float32)
    with Database(StoreSettings(), data_dir=tmp_path) as db:
        store = PgvectorStore(db)
        for name, n in [("one", 3), ("two", 8)]:
            store.ensure_collection(name, embed_model="test", embed_dim=16)
            chunks = [Chunk(id=f"{name}-{i}", document_id=f"{name}-doc", ordinal=i, text=str(i))
                      for i in range(n)]
            store.write_document(collection=name, chunks=chunks, embeddings=vectors[:n],
                                 document=Document(source=f"{name}.md", title=name,
                                                   content_hash="h", sections=(Section("x"),)))
    result = _run(["reindex"], env)
    assert result.returncode == 0, result.stderr
    assert "collection one: 3 chunks in Postgres, 3 in FAISS" in result.stdout
    assert "collection two: 8 chunks in Postgres, 8 in FAISS" in result.stdout
    assert (tmp_path / "faiss" / "default" / "two" / "manifest.json").is_file()
    only = _run(["reindex", "--collection", "one"], env)
    assert only.returncode == 0 and "collection two" not in only.stdout
    _assert_one_line_error(_run(["reindex", "-c", "nope"], env), "'nope' does not exist")


def test_reindex_re_embeds_a_float32_collection_into_int8(tmp_path: Path) -> None:
    from verity.backends.stores.database import Database
    from verity.backends.stores.pgvector_store import PgvectorStore
    from verity.core.settings import StoreSettings

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "fever.md").write_text("# Fever\n\nAspirin lowers fever in adults within an hour.\n")
    env = cli_env(tmp_path)
    float32 = {**env, "VERITY_EMBEDDER__PRECISION": "float32"}
    assert _run(["ingest", str(notes), "--collection", "notes"], float32).returncode == 0
    # the default embedder makes int8 vectors: the float32 collection refuses them
    _assert_one_line_error(_run(["ingest", str(notes), "--collection", "notes"], env),
                           "verity reindex --re-embed --collection notes")
    result = _run(["reindex", "--re-embed", "--collection", "notes"], env)
    assert result.returncode == 0, result.stderr
    assert "collection notes: 1 chunks re-embedded into int8 vectors (onnx)" in result.stdout
    assert "collection notes: 1 chunks in Postgres, 1 in FAISS" in result.stdout
    with Database(StoreSettings(), data_dir=tmp_path) as db:
        [stats] = PgvectorStore(db).stats()
    assert (stats.embed_backend, stats.embed_precision, stats.reembed_precision) == (
        "onnx", "int8", None)


def test_tune_reranker_on_a_missing_collection(tmp_path: Path) -> None:
    result = _run(["tune", "reranker", "--collection", "nothing-here"], cli_env(tmp_path), timeout=120)
    _assert_one_line_error(result, "'nothing-here' does not exist")
    assert not (tmp_path / "models" / "reranker").exists()


def test_cross_encoder_without_a_tuned_model_says_how_to_make_one(tmp_path: Path) -> None:
    env = cli_env(tmp_path, VERITY_RERANK__KIND="cross-encoder",
               VERITY_LLM__BASE_URL="http://127.0.0.1:1/v1")
    _assert_one_line_error(_run(["serve", "--port", str(free_port())], env, timeout=120),
                           "verity tune reranker")




# The suite's budget for one answer (as in conftest.py): on two shared cores llama.cpp can take
# longer than the 120 s default, which made this test fail by a timeout alone under load.
ANSWER_TIMEOUT_S = 900


def _serve(data_dir: Path, docs: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(VERITY + ["serve", "--dev", "--port", str(port), "--ingest", str(docs)],
                            env=cli_env(data_dir, VERITY_LLM__TIMEOUT_S=str(ANSWER_TIMEOUT_S)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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
        r = httpx.post(f"http://127.0.0.1:{port}/v1/query", timeout=ANSWER_TIMEOUT_S + 60,
                       json={"question": "How do I configure the database?"})
        body = r.json()
        assert body["status"] == "answered", body
        assert "docs/configuration.md" in {c["document"] for c in body["citations"]}
        assert processes_using(data_dir), "postgres and llama.cpp should be running"
    finally:
        first_log = _stop(proc)
    assert proc.returncode == 0, first_log
    assert "0 unchanged" in first_log and "0 failed" in first_log
    time.sleep(1)
    assert processes_using(data_dir) == []

    proc = _serve(data_dir, docs, port)
    try:
        _wait_healthy(proc, port)
    finally:
        second_log = _stop(proc)
    n_docs = len(list(docs.glob("*.md")))
    assert f"0 added, 0 updated, {n_docs} unchanged" in second_log, second_log
    assert "0 chunks written" in second_log
    time.sleep(1)
    assert processes_using(data_dir) == []


@pytest.mark.parametrize(("option", "needle"), [
    (["--meta", "no-equals-sign"], "--meta expects KEY=VALUE, got 'no-equals-sign'"),
    (["--meta", "=value"], "--meta expects KEY=VALUE"),
    (["--group", " "], "--group: group names must be non-blank"),
])
def test_malformed_ingest_attributes(tmp_path: Path, option: list[str], needle: str) -> None:
    _assert_one_line_error(_run(["ingest", str(tmp_path), *option], cli_env(tmp_path), timeout=60),
                           needle)


def test_beir_format_refuses_file_options(tmp_path: Path) -> None:
    result = _run(["ingest", str(tmp_path), "--format", "beir", "--sync"], cli_env(tmp_path),
                  timeout=60)
    _assert_one_line_error(result, "--sync, --include and --exclude work with --format files only")


def test_worker_once_logs_json_lines(tmp_path: Path) -> None:
    result = _run(["worker", "--once", "--log-format", "json"], cli_env(tmp_path), timeout=180)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert any(x["message"] == "ran 0 ingestion jobs" for x in lines), lines


@pytest.mark.slow
def test_serve_runs_the_upload_worker_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    # A model server that is never reached: nothing here generates, so no llama.cpp starts.
    env = cli_env(tmp_path / "data", VERITY_LLM__BASE_URL="http://127.0.0.1:9/v1",
               VERITY_WORKER__POLL_INTERVAL_S="0.2")
    proc = subprocess.Popen(VERITY + ["serve", "--dev", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        _wait_healthy(proc, port)
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/v1/documents", data={"collection": "uploads"},
                       files=[("files", ("plants.md", b"# Plants\n\nWatered on Tuesdays."))],
                       headers={"X-Request-ID": "cli-upload-1"})
        assert r.status_code == 202, r.text
        job_url = f"{base}/v1/jobs/{r.json()['job_id']}"
        deadline = time.monotonic() + 180
        while (job := httpx.get(job_url).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "done", job
        # verity serve hands the service the reports folder (none saved yet).
        assert httpx.get(f"{base}/v1/eval/reports").json() == {"reports": []}
    finally:
        log = _stop(proc)
    assert proc.returncode == 0, log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len(lines) == len([line for line in log.splitlines() if line.strip()]), log
    access = [x for x in lines if x["logger"] == "verity.access"]
    assert any(x["request_id"] == "cli-upload-1" and x["status"] == 202 for x in access)
    assert any("job" in x["message"] and "done" in x["message"] for x in lines)
    time.sleep(1)
    assert processes_using(tmp_path / "data") == []
