"""Parts dying under the service: the model server killed mid-answer, the database
restarted under load, an upload worker killed mid-job, and index files damaged.

Each test breaks a real component (the local llama.cpp child is sent SIGKILL, the
embedded Postgres is stopped with ``pg_ctl``, FAISS files are truncated or overwritten
on disk) and checks that callers get a clear error while it is down and normal answers
after, with nothing lost and no restart of the service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ingest.worker import IngestWorker
from service.app import create_app
from tests.conftest import make_settings
from tests.helpers import (
    CHUNK_ROWS,
    VERITY,
    cli_env,
    ingest_texts,
    serve_app,
    sse_events,
    start_embedded_again,
    stop_embedded,
    store_rows,
)
from verity.answering.runtime import Runtime
from verity.backends.embedders import SentenceTransformerEmbedder
from verity.backends.generators import CircuitBreaker, OpenAIChatGenerator
from verity.backends.llama_server import LlamaCppServer
from verity.backends.stores.database import Database
from verity.backends.stores.faiss_index import FaissAccelerator
from verity.backends.stores.jobs import JobQueue
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.errors import StoreError
from verity.core.prompts import PromptLibrary
from verity.core.settings import (
    ChunkingSettings,
    FaissSettings,
    LLMSettings,
    StoreSettings,
    WorkerSettings,
)
from verity.core.types import UploadedFile

pytestmark = pytest.mark.integration

NOTES = {f"note-{i}.md": f"Note {i}: the {w} shelf holds the {w} binders of team {i}."
         for i, w in enumerate(["red", "blue", "green", "grey", "white", "black"])}


def _rows(db: Database) -> list[tuple[object, ...]]:
    with db.pool.connection() as conn:
        return list(conn.execute(CHUNK_ROWS).fetchall())



# --- The model server killed mid-answer ---------------------------------------------------


def _wait_healthy(generator: OpenAIChatGenerator, server: LlamaCppServer, *,
                  within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not (server.restarts == 1 and generator.health()):
        assert time.monotonic() < deadline, "the supervisor did not restart the model server"
        time.sleep(0.5)


def test_model_server_killed_mid_stream_is_restarted_and_answers_resume(
    retrieval_runtime: Runtime, collection: str, data_dir: Path
) -> None:
    ingest_texts(retrieval_runtime, collection, NOTES)
    with LlamaCppServer(LLMSettings(), data_dir=data_dir) as server:
        inner = OpenAIChatGenerator(LLMSettings(model=server.model_name, timeout_s=120,
                                                max_tokens=48), base_url=server.base_url)
        settings = retrieval_runtime.settings.model_copy(update={
            "server": retrieval_runtime.settings.server.model_copy(update={"auth": False})})
        runtime = replace(retrieval_runtime, settings=settings, generator=CircuitBreaker(inner))
        question = {"question": "Which shelf holds the blue binders?", "collection": collection,
                    "crag": False}
        with TestClient(create_app(settings, runtime=runtime)) as client:
            before = client.post("/v1/query", json=question).json()
            assert before["status"] in ("answered", "abstained"), before
            with client.stream("POST", "/v1/query", json={**question, "stream": True}) as r:
                assert r.status_code == 200
                seen = []
                for kind, data in sse_events(r.iter_lines()):
                    seen.append((kind, data))
                    if kind == "token" and len(seen) == 1:
                        assert server.pid is not None
                        os.kill(server.pid, signal.SIGKILL)
            assert seen[-1] == ("error", {"type": "generation_unavailable",
                                          "message": seen[-1][1]["message"]})
            # While it restarts: the sources, without an answer; the service itself is fine.
            degraded = client.post("/v1/query", json=question).json()
            assert degraded["status"] == "generation_unavailable" and degraded["sources"]
            assert client.get("/healthz").status_code == 200
            _wait_healthy(inner, server, within_s=180)
            after = client.post("/v1/query", json=question).json()
    # The restarted server generates again. Whether the 0.5B model answers or abstains on six
    # near-identical notes is decided by a hair: the same question has come out either way
    # from a fresh server and from the restarted one (what llama.cpp holds cached from its
    # start-up probe changes the arithmetic), so the test checks the restart, not the reading.
    assert after["status"] in ("answered", "abstained") and after["answer"].strip(), after
    if after["status"] == "answered":
        assert "note-1.md" in {c["document"] for c in after["citations"]}


# --- PostgreSQL stopped and started again under load -------------------------------------


@dataclass
class Load:
    """Searches sent one after another by a few threads; every response is recorded."""

    url: str
    body: dict[str, object]
    seen: list[tuple[float, int, str, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                r = client.post("/v1/search", json=self.body)
                kind = r.json()["error"]["type"] if r.status_code != 200 else ""
                self.seen.append((time.monotonic(), r.status_code, kind,
                                  r.headers.get("Retry-After")))

    def wait_for(self, status: int, *, after: float, within_s: float = 30) -> float:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if any(t > after and s == status for t, s, _, _ in list(self.seen)):
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"no {status} within {within_s}s: {self.statuses(after)}")

    def statuses(self, after: float) -> list[int]:
        return [s for t, s, _, _ in list(self.seen) if t > after]


@contextmanager
def _load(url: str, body: dict[str, object], *, clients: int) -> Iterator[Load]:
    load = Load(url, body)
    threads = [threading.Thread(target=load.run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield load
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)


def test_postgres_restarted_under_load_gives_503s_with_retry_after_then_recovers(
    own_database: Database, embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    settings = settings.model_copy(update={"server": settings.server.model_copy(
        update={"auth": False, "threads": 4})})
    runtime = Runtime(settings=settings, db=own_database, store=PgvectorStore(own_database),
                      embedder=embedder, prompts=PromptLibrary.load())
    ingest_texts(runtime, "shelves", NOTES)
    before = _rows(own_database)
    body: dict[str, object] = {"query": "which shelf holds the blue binders?", "collection": "shelves"}
    with serve_app(create_app(settings, runtime=runtime), lifespan="on") as url, \
            _load(url, body, clients=3) as load:
        load.wait_for(200, after=0)
        stopped = time.monotonic()
        stop_embedded(own_database)
        load.wait_for(503, after=stopped)
        time.sleep(1.0)  # a second of outage under load
        start_embedded_again(own_database)
        started = time.monotonic()
        recovered = load.wait_for(200, after=started)
        time.sleep(2.0)  # and a while of normal service after
        load.stop.set()
    during = [(s, k, r) for t, s, k, r in load.seen if stopped < t < started]
    assert during and {s for s, _, _ in during} <= {200, 503}
    assert all(k == "store_unavailable" and r and int(r) > 0 for s, k, r in during if s == 503)
    # Once one request succeeded, the pool holds no broken connections: all later ones succeed.
    after = [s for t, s, _, _ in load.seen if t > recovered + 0.5]
    assert after and set(after) == {200}, after
    assert _rows(own_database) == before


# --- An upload worker killed mid-job ------------------------------------------------------

N_UPLOADS = 72


def _uploads() -> list[UploadedFile]:
    """Notes of 8 one-line sections each: 576 chunks, two embedding batches."""
    return [UploadedFile(f"note-{i:02d}.md", (f"# Note {i}\n" + "\n".join(
        f"## Part {p}\nShelf {p} of note {i} holds {i * 31 + p * 7} binders." for p in range(8)
    )).encode()) for i in range(N_UPLOADS)]


def _kill_worker_mid_job(data_dir: Path, db: Database) -> int:
    """Run ``verity worker`` and SIGKILL it once some uploads but not all are stored."""
    worker = subprocess.Popen([*VERITY, "worker"], env=cli_env(data_dir),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and worker.poll() is None:
            with db.pool.connection() as conn:
                row = conn.execute("SELECT count(*) FROM documents").fetchone()
            if row and 0 < row[0] < N_UPLOADS:
                return int(row[0])
            time.sleep(0.02)
        return 0
    finally:
        worker.kill()
        worker.wait(30)


@pytest.mark.slow
def test_an_upload_worker_killed_mid_job_is_retried_to_the_rows_of_a_clean_run(
    embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    settings = WorkerSettings(stale_after_s=1.0, poll_interval_s=0.1)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    with Database(StoreSettings(), data_dir=killed) as db:
        queue = JobQueue(db)
        job_id = queue.enqueue(tenant="default", collection="notes", files=_uploads())
        written = _kill_worker_mid_job(killed, db)
        assert written, "never saw the job half done"
        assert queue.get(job_id, tenant="default").status == "running"
        # Another worker finds the job stale, takes it over and finishes it.
        time.sleep(settings.stale_after_s + 0.5)
        assert queue.requeue_stale(stale_after_s=settings.stale_after_s, max_attempts=3) == 1
        retry = IngestWorker(db=db, embedder=embedder, chunking=ChunkingSettings(),
                             settings=settings)
        assert retry.run_pending() == 1
        job = queue.get(job_id, tenant="default")
        documents, chunks = store_rows(db)
    assert job.status == "done" and job.attempt == 2
    assert job.progress.files_done == N_UPLOADS and not job.progress.failures

    with Database(StoreSettings(), data_dir=clean) as db:
        JobQueue(db).enqueue(tenant="default", collection="notes", files=_uploads())
        IngestWorker(db=db, embedder=embedder, chunking=ChunkingSettings(),
                     settings=settings).run_pending()
        assert store_rows(db) == (documents, chunks)
    assert len(documents) == N_UPLOADS and len(chunks) == 8 * N_UPLOADS


# --- Damaged FAISS files ------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = [("binary.faiss", _truncate), ("binary.faiss", lambda p: p.write_bytes(b"")),
          ("int8.npy", _truncate), ("int8.npy", lambda p: p.write_bytes(b"not an array")),
          ("chunk_ids.npy", _truncate), ("ranges.npy", _truncate),
          ("manifest.json", lambda p: p.write_text("{"))]


@pytest.mark.parametrize(("name", "damage"), DAMAGE,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(DAMAGE)])
def test_a_damaged_faiss_file_is_detected_and_rebuilt_from_postgres(
    retrieval_runtime: Runtime, database: Database, collection: str, tmp_path: Path,
    name: str, damage: object,
) -> None:
    ingest_texts(retrieval_runtime, collection, NOTES)
    query = retrieval_runtime.embedder.embed_query("which shelf holds the blue binders?")
    first = FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings())
    expected = first.search(collection, query=query, top_k=3, oversample=4)
    assert callable(damage)
    damage(first.directory(collection) / name)

    # A process starting afresh (the files are read again) answers the same, after a rebuild.
    fresh = FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings())
    index, rebuilt = fresh.load_or_build(collection)
    assert rebuilt
    assert fresh.search(collection, query=query, top_k=3, oversample=4) == expected
    # The rebuilt files are whole again: a third process loads them without rebuilding.
    again = FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings())
    assert again.load_or_build(collection)[1] is False
    assert np.array_equal(np.asarray(again.get(collection).chunk_ids), np.asarray(index.chunk_ids))


# --- A full or read-only data directory ---------------------------------------------------


def test_a_full_disk_fails_the_faiss_save_clearly_and_searches_go_on(
    retrieval_runtime: Runtime, database: Database, collection: str, tmp_path: Path
) -> None:
    ingest_texts(retrieval_runtime, collection, NOTES)
    query = retrieval_runtime.embedder.embed_query("which shelf holds the blue binders?")
    expected = FaissAccelerator(database, data_dir=tmp_path / "ok", settings=FaissSettings()
                                ).search(collection, query=query, top_k=3, oversample=4)
    full = FaissAccelerator(database, data_dir=tmp_path / "full", settings=FaissSettings())
    directory = full.directory(collection)
    directory.mkdir(parents=True)
    # The int8 codes are written to this temporary name first: make it a disk with no space.
    (directory / f".int8.npy.{os.getpid()}.tmp").symlink_to("/dev/full")
    with pytest.raises(StoreError, match="No space left on device") as failed:
        full.reindex(collection)
    assert str(directory) in str(failed.value) and "\n" not in str(failed.value)
    assert full.search(collection, query=query, top_k=3, oversample=4) == expected
    assert not (directory / "manifest.json").exists()  # nothing half-written is ever loaded
    fresh = FaissAccelerator(database, data_dir=tmp_path / "full", settings=FaissSettings())
    assert fresh.search(collection, query=query, top_k=3, oversample=4) == expected


def test_reindex_into_a_data_directory_it_cannot_write_is_one_clear_error(
    own_database: Database, embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    runtime = Runtime(settings=make_settings(tmp_path), db=own_database,
                      store=PgvectorStore(own_database), embedder=embedder,
                      prompts=PromptLibrary.load())
    ingest_texts(runtime, "shelves", NOTES)
    before = _rows(own_database)
    # A file where the index folder goes: nothing can be written under it, as on a
    # read-only disk, even for a test running as root.
    (tmp_path / "faiss").write_text("")
    done = subprocess.run([*VERITY, "reindex"], env=cli_env(tmp_path), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write the FAISS index to {tmp_path / 'faiss'}")
    assert "verity reindex" in line
    assert _rows(own_database) == before
