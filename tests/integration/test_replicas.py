"""Two service replicas and their upload workers on one database.

Deployed as in ``deploy/k8s/verity.yaml``: two ``verity serve`` processes, each with
its ingestion worker thread (the default), sharing nothing but one PostgreSQL (here
an embedded one, reached by its DSN). Many small uploads go through both replicas
at once; every upload must be ingested exactly once, by one worker, into exactly
the rows a single process makes of the same uploads.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingest.worker import IngestWorker
from tests.helpers import VERITY, cli_env, store_rows
from verity.backends.embedders import LocalEmbedder
from verity.backends.llama_server import free_port
from verity.backends.stores.database import Database
from verity.backends.stores.jobs import JobQueue
from verity.core.settings import ChunkingSettings, StoreSettings, WorkerSettings
from verity.core.types import UploadedFile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_UPLOADS = 30
FILES_PER_UPLOAD = 3
COLLECTION = "notes"
JOB_ROWS = "SELECT id::text, status, attempt, worker, files_done, error FROM jobs"


def _uploads() -> list[list[UploadedFile]]:
    """90 small notes in 30 uploads of 3; each note is one or two chunks."""
    return [[UploadedFile(f"note-{u:02d}-{f}.md", (
        f"# Note {u}.{f}\n\nShelf {f} of aisle {u} holds {u * 37 + f * 11} binders.\n\n"
        + ("## Returns\n\nBinders go back to the trolley by the door.\n" if f % 2 else "")
    ).encode()) for f in range(FILES_PER_UPLOAD)] for u in range(N_UPLOADS)]


@dataclass
class Replica:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]


def _start(root: Path, *, dsn: str, onnx: Path) -> Replica:
    """``verity serve --dev`` with its worker thread, over ``dsn``, in a data dir of its own.

    The embedding model's export is shared (read only) so that no replica exports it again.
    """
    (root / "models").mkdir(parents=True)
    (root / "models" / "onnx").symlink_to(onnx)
    port = free_port()
    env = cli_env(root, VERITY_STORE__DSN=dsn, VERITY_LOG_FORMAT="json",
                  # Nothing here generates: no llama.cpp starts, no model server is called.
                  VERITY_LLM__BASE_URL="http://127.0.0.1:9/v1", VERITY_LLM__TOKENIZER="estimate",
                  VERITY_SERVER__RATE_LIMIT_PER_MINUTE="0", VERITY_WORKER__POLL_INTERVAL_S="0.1")
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*VERITY, "serve", "--dev", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Replica(url=f"http://127.0.0.1:{port}", log=log, proc=proc)


def _wait_healthy(replica: Replica, *, within_s: float = 300) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert replica.proc.poll() is None, f"serve exited early:\n{replica.log.read_text()}"
        try:
            if httpx.get(f"{replica.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"serve did not become healthy:\n{replica.log.read_text()}")


def _stop(replica: Replica) -> None:
    replica.proc.send_signal(signal.SIGTERM)
    try:
        replica.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        replica.proc.kill()
        replica.proc.wait(timeout=10)


@contextmanager
def _replicas(root: Path, *, dsn: str, onnx: Path, n: int) -> Iterator[list[Replica]]:
    with ExitStack() as stack:
        replicas = []
        for i in range(n):
            replica = _start(root / f"replica-{i}", dsn=dsn, onnx=onnx)
            stack.callback(_stop, replica)
            replicas.append(replica)
        for replica in replicas:  # they start side by side
            _wait_healthy(replica)
        yield replicas


def _upload(url: str, files: list[UploadedFile]) -> str:
    r = httpx.post(f"{url}/v1/documents", data={"collection": COLLECTION}, timeout=60,
                   files=[("files", (f.name, f.data)) for f in files])
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _wait_all_ended(url: str, job_ids: list[str], *, within_s: float = 300) -> dict[str, str]:
    deadline = time.monotonic() + within_s
    while True:
        listed = httpx.get(f"{url}/v1/jobs", params={"collection": COLLECTION, "limit": 100},
                           timeout=30).json()["jobs"]
        status = {j["id"]: j["status"] for j in listed}
        if set(status) >= set(job_ids) and not {"queued", "running"} & set(status.values()):
            return status
        assert time.monotonic() < deadline, f"jobs still open: {Counter(status.values())}"
        time.sleep(0.5)


def _logged_jobs(replicas: list[Replica]) -> tuple[Counter[str], Counter[str]]:
    """How often each job was started and finished, by the workers' own log lines."""
    started: Counter[str] = Counter()
    ended: Counter[str] = Counter()
    for replica in replicas:
        for line in replica.log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            words = str(json.loads(line).get("message", "")).split()
            if len(words) > 2 and words[0] == "job":
                if words[2] == "ingesting":
                    started[words[1].rstrip(":")] += 1
                elif words[2].startswith("done"):
                    ended[words[1]] += 1
    return started, ended


def _clean_run(root: Path, embedder: LocalEmbedder,
               uploads: list[list[UploadedFile]]) -> tuple[list[tuple[object, ...]], ...]:
    """The rows one process with one worker makes of the same uploads."""
    with Database(StoreSettings(), data_dir=root) as db:
        queue = JobQueue(db)
        for files in uploads:
            queue.enqueue(tenant="default", collection=COLLECTION, files=files)
        worker = IngestWorker(db=db, embedder=embedder, chunking=ChunkingSettings(),
                              settings=WorkerSettings())
        assert worker.run_pending() == len(uploads)
        return store_rows(db)


@pytest.mark.timeout(900)
def test_two_replicas_with_two_workers_ingest_every_upload_exactly_once(
    embedder: LocalEmbedder, data_dir: Path, tmp_path: Path
) -> None:
    uploads = _uploads()
    onnx = data_dir / "models" / "onnx"  # exported by the session's embedder
    assert onnx.is_dir()
    with Database(StoreSettings(), data_dir=tmp_path / "shared") as db:
        with _replicas(tmp_path, dsn=db.conninfo, onnx=onnx, n=2) as replicas:
            urls = [r.url for r in replicas]
            # Eight clients at once, alternating replicas: both enqueue while both workers claim.
            with ThreadPoolExecutor(8) as pool:
                job_ids = list(pool.map(lambda i: _upload(urls[i % 2], uploads[i]),
                                        range(N_UPLOADS)))
            # A job is visible through the replica that did not take the upload, too.
            status = _wait_all_ended(urls[1], job_ids)
        documents, chunks = store_rows(db)
        with db.pool.connection() as conn:
            jobs = {row[0]: row[1:] for row in conn.execute(JOB_ROWS).fetchall()}
    started, ended = _logged_jobs(replicas)

    assert len(set(job_ids)) == N_UPLOADS and set(jobs) == set(job_ids)
    assert set(status.values()) == {"done"}
    # Each job was claimed once (attempt 1), started once and finished once, by one worker.
    assert {j: (s, a, n, e) for j, (s, a, _, n, e) in jobs.items()} == {
        j: ("done", 1, FILES_PER_UPLOAD, None) for j in job_ids}
    assert started == ended == Counter(dict.fromkeys(job_ids, 1))
    # Both workers took part, so the queue really was shared.
    assert len({w for _, _, w, _, _ in jobs.values()}) == 2
    # No upload lost or doubled: the rows (ids, content hashes, chunk texts) of a clean run.
    assert len(documents) == N_UPLOADS * FILES_PER_UPLOAD
    assert (documents, chunks) == _clean_run(tmp_path / "clean", embedder, uploads)
