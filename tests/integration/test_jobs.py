"""The job queue (verity/backends/stores/jobs.py) and the worker (ingest/worker.py) against the
embedded Postgres."""

from __future__ import annotations

import psycopg
import pytest

from ingest.worker import IngestWorker
from verity.backends.embedders import LocalEmbedder
from verity.backends.stores.database import Database
from verity.backends.stores.jobs import STALE_ERROR, JobQueue
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.errors import NotFoundError
from verity.core.settings import ChunkingSettings, WorkerSettings
from verity.core.types import JobProgress, UploadedFile

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(database: Database) -> JobQueue:
    """An empty queue: jobs other modules left behind would be claimed first."""
    with database.pool.connection() as conn:
        conn.execute("DELETE FROM jobs")
    return JobQueue(database)


def _enqueue(queue: JobQueue, collection: str, tenant: str = "jobs-test") -> str:
    return queue.enqueue(tenant=tenant, collection=collection, groups=("hr",),
                         metadata={"year": 2025}, files=[UploadedFile("a.txt", b"Alpha.")])


def test_claims_skip_jobs_locked_by_another_worker(
    queue: JobQueue, database: Database, collection: str
) -> None:
    first, second = _enqueue(queue, collection), _enqueue(queue, collection)
    with psycopg.connect(database.conninfo) as other, other.transaction():
        other.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (first,))
        claimed = queue.claim(worker="w2")
        assert claimed is not None and claimed.id == second
        assert queue.claim(worker="w3") is None
    job = queue.claim(worker="w1")
    assert job is not None and job.id == first and job.status == "running" and job.attempt == 1
    assert job.acl_groups == ("hr",) and job.metadata == {"year": 2025}
    assert queue.files(job) == [UploadedFile("a.txt", b"Alpha.")]


def test_get_is_scoped_to_the_tenant(queue: JobQueue, collection: str) -> None:
    job_id = _enqueue(queue, collection, tenant="one")
    assert queue.get(job_id, tenant="one").status == "queued"
    for tenant, key in [("two", job_id), ("one", "nope")]:
        with pytest.raises(NotFoundError):
            queue.get(key, tenant=tenant)


def test_a_stale_job_is_requeued_and_its_old_worker_cannot_finish_it(
    queue: JobQueue, database: Database, collection: str
) -> None:
    job_id = _enqueue(queue, collection)
    lost = queue.claim(worker="slow")
    assert lost is not None
    with database.pool.connection() as conn:
        conn.execute("UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE id = %s",
                     (job_id,))
    assert queue.requeue_stale(stale_after_s=60, max_attempts=3) == 1
    again = queue.claim(worker="fast")
    assert again is not None and again.attempt == 2
    assert not queue.report(lost, JobProgress(files_done=1))
    assert queue.end(lost, JobProgress(files_done=1)) is None
    ended = queue.end(again, JobProgress(files_done=1, chunks_written=1))
    assert ended is not None and ended.status == "done"
    assert queue.files(again) == []  # the bytes are dropped once the job ends


def test_a_job_that_keeps_going_stale_fails(
    queue: JobQueue, database: Database, collection: str
) -> None:
    job_id = _enqueue(queue, collection)
    assert queue.claim(worker="w") is not None
    with database.pool.connection() as conn:
        conn.execute("UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE id = %s",
                     (job_id,))
    assert queue.requeue_stale(stale_after_s=60, max_attempts=1) == 1
    job = queue.get(job_id, tenant="jobs-test")
    assert job.status == "failed" and job.error == STALE_ERROR


def test_a_stopping_worker_puts_its_job_back(
    queue: JobQueue, database: Database, embedder: LocalEmbedder, collection: str
) -> None:
    job_id = _enqueue(queue, collection)
    worker = IngestWorker(db=database, embedder=embedder, chunking=ChunkingSettings(),
                          settings=WorkerSettings())
    worker.stop()
    assert worker.run_once() is None
    assert queue.get(job_id, tenant="jobs-test").status == "queued"

    fresh = IngestWorker(db=database, embedder=embedder, chunking=ChunkingSettings(),
                         settings=WorkerSettings())
    done = fresh.run_once()
    assert done is not None and done.status == "done" and done.attempt == 2
    [doc] = PgvectorStore(database, tenant="jobs-test").list_documents(collection=collection)[0]
    assert doc.source == "a.txt" and doc.acl_groups == ("hr",) and doc.metadata == {"year": 2025}


def test_a_collection_built_with_another_embedder_fails_the_job(
    queue: JobQueue, database: Database, embedder: LocalEmbedder, collection: str
) -> None:
    PgvectorStore(database, tenant="jobs-test").create_collection(
        collection, embed_model="some-other-model", embed_dim=384)
    job_id = _enqueue(queue, collection)
    worker = IngestWorker(db=database, embedder=embedder, chunking=ChunkingSettings(),
                          settings=WorkerSettings())
    assert worker.run_pending() == 1
    job = queue.get(job_id, tenant="jobs-test")
    assert job.status == "failed" and job.error is not None and "some-other-model" in job.error
