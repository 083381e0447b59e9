"""The ingestion job queue: the ``jobs`` and ``job_files`` tables.

The service enqueues uploads; workers claim them with ``FOR UPDATE SKIP
LOCKED``, so several workers never claim the same job. A claim increments the
job's ``attempt``, and every later update names the attempt it belongs to: a
worker that lost its job (judged stale and given to another) cannot overwrite
the new owner's progress. Ingestion is idempotent (stable ids, content
hashes), so running a job again after a crash is safe.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from verity.backends.stores.database import Database
from verity.core.errors import ConflictError, NotFoundError
from verity.core.types import FileFailure, Job, JobProgress, UploadedFile

_COLUMNS = """
id::text, tenant, collection, status, files_total, files_done, chunks_written, failures,
acl_groups, metadata, error, attempt, created_at, started_at, finished_at, filenames, kind,
chunks_total
"""

INSERT_JOB = """
INSERT INTO jobs (tenant, collection, acl_groups, metadata, files_total, filenames)
VALUES (%(tenant)s, %(collection)s, %(groups)s, %(metadata)s, %(files_total)s, %(filenames)s)
RETURNING id::text
"""

INSERT_FILE = """
INSERT INTO job_files (job_id, ordinal, filename, content)
VALUES (%(job_id)s, %(ordinal)s, %(filename)s, %(content)s)
"""

# The oldest queued job, skipping rows another worker has locked at this moment.
CLAIM = f"""
UPDATE jobs SET status = 'running', attempt = attempt + 1, worker = %(worker)s,
       files_done = 0, chunks_written = 0, failures = '[]'::jsonb,
       started_at = now(), updated_at = now()
WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at
            FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING {_COLUMNS}
"""

# One queued job by id (a command that queues a job and runs it itself).
CLAIM_ONE = f"""
UPDATE jobs SET status = 'running', attempt = attempt + 1, worker = %(worker)s,
       started_at = now(), updated_at = now()
WHERE id = %(id)s AND status = 'queued'
RETURNING {_COLUMNS}
"""

INSERT_REEMBED = """
INSERT INTO jobs (tenant, collection, kind, chunks_total, metadata)
SELECT %(tenant)s, %(collection)s, 'reembed', %(chunks_total)s, %(target)s
WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE tenant = %(tenant)s AND collection = %(collection)s
                  AND kind = 'reembed' AND status IN ('queued', 'running'))
RETURNING id::text
"""

GET_FILES = "SELECT filename, content FROM job_files WHERE job_id = %(id)s ORDER BY ordinal"

_OWNED = "id = %(id)s AND status = 'running' AND attempt = %(attempt)s"

UPDATE_PROGRESS = f"""
UPDATE jobs SET files_done = %(files_done)s, chunks_written = %(chunks_written)s,
       failures = %(failures)s, updated_at = now()
WHERE {_OWNED}
"""

UPDATE_CHUNKS = f"""
UPDATE jobs SET chunks_written = %(chunks_written)s, chunks_total = %(chunks_total)s,
       updated_at = now()
WHERE {_OWNED}
"""

END_JOB = f"""
UPDATE jobs SET status = %(status)s, files_done = %(files_done)s,
       chunks_written = %(chunks_written)s, failures = %(failures)s, error = %(error)s,
       finished_at = now(), updated_at = now()
WHERE {_OWNED}
RETURNING {_COLUMNS}
"""

RELEASE = f"""
UPDATE jobs SET status = 'queued', worker = NULL, files_done = 0, chunks_written = 0,
       failures = '[]'::jsonb, updated_at = now()
WHERE {_OWNED}
"""

DELETE_FILES = "DELETE FROM job_files WHERE job_id = %(id)s"

GET_JOB = f"SELECT {_COLUMNS} FROM jobs WHERE id = %(id)s AND tenant = %(tenant)s"

# Running jobs whose worker went quiet go back to the queue, or fail after max_attempts.
REQUEUE_STALE = """
UPDATE jobs SET
    status = CASE WHEN attempt >= %(max_attempts)s THEN 'failed' ELSE 'queued' END,
    error = CASE WHEN attempt >= %(max_attempts)s THEN %(error)s ELSE error END,
    finished_at = CASE WHEN attempt >= %(max_attempts)s THEN now() END,
    worker = NULL, updated_at = now()
WHERE status = 'running' AND updated_at < now() - make_interval(secs => %(stale_after_s)s)
RETURNING id, status
"""

# The tenant's jobs, newest first; a collection's only when one is named.
LIST_JOBS = f"""
SELECT {_COLUMNS} FROM jobs
WHERE tenant = %(tenant)s AND (%(collection)s::text IS NULL OR collection = %(collection)s)
ORDER BY created_at DESC LIMIT %(limit)s
"""

# A queued or running job stops: its worker's next report no longer matches a running job.
CANCEL = f"""
UPDATE jobs SET status = 'cancelled', error = %(error)s, finished_at = now(), updated_at = now()
WHERE id = %(id)s AND tenant = %(tenant)s AND status IN ('queued', 'running')
RETURNING {_COLUMNS}
"""

CANCELLED = "cancelled before it finished; files ingested until then stay in the collection"
REEMBED_CANCELLED = ("cancelled before it finished; chunks re-embedded until then keep their "
                     "new vectors, and re-embedding again with the same embedder resumes after them")

COUNT_BY_STATUS = "SELECT status, count(*) FROM jobs GROUP BY status"

STALE_ERROR = ("the worker running this job stopped responding too many times; "
               "upload the files again, and check the worker's log")


class JobQueue:
    """Ingestion jobs in PostgreSQL, shared by the service (enqueue, get) and workers.

    Example:
        >>> queue = JobQueue(db)
        >>> job_id = queue.enqueue(tenant="acme", collection="handbook",
        ...                        files=[UploadedFile("a.md", b"# A")])
        >>> job = queue.claim(worker="host-1")
        >>> queue.end(job, JobProgress(files_done=1, chunks_written=3)).status
        'done'
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def enqueue(self, *, tenant: str, collection: str, files: Sequence[UploadedFile],
                groups: Sequence[str] = (), metadata: dict[str, Any] | None = None) -> str:
        """Queue files for ingestion in one transaction; returns the job id."""
        with self._db.pool.connection() as conn, conn.transaction():
            row = conn.execute(INSERT_JOB, {
                "tenant": tenant, "collection": collection, "groups": list(groups),
                "metadata": json.dumps(metadata or {}), "files_total": len(files),
                "filenames": [f.name for f in files],
            }).fetchone()
            assert row is not None
            job_id = str(row[0])
            with conn.cursor() as cur:
                cur.executemany(INSERT_FILE, [
                    {"job_id": job_id, "ordinal": i, "filename": f.name, "content": f.data}
                    for i, f in enumerate(files)
                ])
        return job_id

    def enqueue_reembed(self, *, tenant: str, collection: str, chunks_total: int,
                        backend: str, precision: str) -> str:
        """Queue a re-embed of a collection into vectors of ``backend`` and ``precision`` (kept
        in the job's metadata); returns the job id.

        Raises:
            ConflictError: a re-embed of the collection is already queued or running.
        """
        with self._db.pool.connection() as conn:
            target = json.dumps({"backend": backend, "precision": precision})
            row = conn.execute(INSERT_REEMBED, {"tenant": tenant, "collection": collection,
                                                "chunks_total": chunks_total,
                                                "target": target}).fetchone()
        if row is None:
            raise ConflictError(f"a re-embed of collection {collection!r} is already queued or "
                                "running; follow it in GET /v1/jobs, or cancel it first")
        return str(row[0])

    def claim(self, *, worker: str, job_id: str | None = None) -> Job | None:
        """Mark the oldest queued job (or the queued job ``job_id``) running for ``worker`` and
        return it; None if there is none."""
        with self._db.pool.connection() as conn:
            if job_id is None:
                row = conn.execute(CLAIM, {"worker": worker}).fetchone()
            else:
                row = conn.execute(CLAIM_ONE, {"worker": worker, "id": job_id}).fetchone()
        return None if row is None else _job(row)

    def files(self, job: Job) -> list[UploadedFile]:
        """The uploaded files of a job, in upload order."""
        with self._db.pool.connection() as conn:
            rows = conn.execute(GET_FILES, {"id": job.id}).fetchall()
        return [UploadedFile(name=r[0], data=bytes(r[1])) for r in rows]

    def report(self, job: Job, progress: JobProgress) -> bool:
        """Record progress (and that the worker is alive); False if the job is no longer ours."""
        with self._db.pool.connection() as conn:
            cur = conn.execute(UPDATE_PROGRESS, {**_owned(job), **_progress(progress)})
            return cur.rowcount > 0

    def report_chunks(self, job: Job, *, done: int, total: int) -> bool:
        """Record a re-embed's progress in chunks; False if the job is no longer ours."""
        with self._db.pool.connection() as conn:
            cur = conn.execute(UPDATE_CHUNKS, {**_owned(job), "chunks_written": done,
                                               "chunks_total": total})
            return cur.rowcount > 0

    def end(self, job: Job, progress: JobProgress, *, error: str | None = None) -> Job | None:
        """Finish a job: ``done``, or ``failed`` when ``error`` is given; its files are deleted.

        Returns:
            The finished job, or None if it was no longer this worker's.
        """
        params = {**_owned(job), **_progress(progress), "error": error,
                  "status": "failed" if error else "done"}
        with self._db.pool.connection() as conn, conn.transaction():
            row = conn.execute(END_JOB, params).fetchone()
            if row is not None:
                conn.execute(DELETE_FILES, {"id": job.id})
        return None if row is None else _job(row)

    def release(self, job: Job) -> None:
        """Put a running job back in the queue (its worker is stopping); it will run again."""
        with self._db.pool.connection() as conn:
            conn.execute(RELEASE, _owned(job))

    def get(self, job_id: str, *, tenant: str) -> Job:
        """A job of ``tenant``.

        Raises:
            NotFoundError: no such job in this tenant (another tenant's job included).
        """
        missing = NotFoundError("no such job; job ids are returned by POST /v1/documents")
        try:
            key = uuid.UUID(job_id)
        except ValueError:
            raise missing from None
        with self._db.pool.connection() as conn:
            row = conn.execute(GET_JOB, {"id": key, "tenant": tenant}).fetchone()
        if row is None:
            raise missing
        return _job(row)

    def recent(self, *, tenant: str, collection: str | None = None, limit: int = 20) -> list[Job]:
        """The tenant's most recent jobs (of one collection when named), newest first."""
        with self._db.pool.connection() as conn:
            rows = conn.execute(LIST_JOBS, {"tenant": tenant, "collection": collection,
                                            "limit": limit}).fetchall()
        return [_job(r) for r in rows]

    def cancel(self, job_id: str, *, tenant: str) -> Job:
        """Cancel a queued or running job of ``tenant``; its uploaded bytes are dropped.

        A running job's worker stops at its next progress report; documents it
        finished before then stay in the collection.

        Raises:
            NotFoundError: no such job in this tenant.
            ConflictError: the job already ended.
        """
        job = self.get(job_id, tenant=tenant)
        with self._db.pool.connection() as conn, conn.transaction():
            message = REEMBED_CANCELLED if job.kind == "reembed" else CANCELLED
            row = conn.execute(CANCEL, {"id": job.id, "tenant": tenant,
                                        "error": message}).fetchone()
            if row is not None:
                conn.execute(DELETE_FILES, {"id": job.id})
        if row is None:
            raise ConflictError(f"the job already ended ({self.get(job_id, tenant=tenant).status}); "
                                "only queued or running jobs can be cancelled")
        return _job(row)

    def requeue_stale(self, *, stale_after_s: float, max_attempts: int) -> int:
        """Requeue (or fail, after ``max_attempts``) running jobs without progress for a while.

        Returns:
            How many jobs were requeued or failed.
        """
        with self._db.pool.connection() as conn, conn.transaction():
            rows = conn.execute(REQUEUE_STALE, {"stale_after_s": stale_after_s,
                                                "max_attempts": max_attempts,
                                                "error": STALE_ERROR}).fetchall()
            for job_id, status in rows:
                if status == "failed":
                    conn.execute(DELETE_FILES, {"id": job_id})
        return len(rows)

    def counts(self) -> dict[str, int]:
        """Jobs per status, over all tenants (for metrics)."""
        with self._db.pool.connection() as conn:
            rows = conn.execute(COUNT_BY_STATUS).fetchall()
        return {str(status): int(n) for status, n in rows}


def _owned(job: Job) -> dict[str, Any]:
    return {"id": job.id, "attempt": job.attempt}


def _progress(progress: JobProgress) -> dict[str, Any]:
    failures = [{"file": f.file, "reason": f.reason} for f in progress.failures]
    return {"files_done": progress.files_done, "chunks_written": progress.chunks_written,
            "failures": json.dumps(failures)}


def _job(row: tuple[Any, ...]) -> Job:
    failures = tuple(FileFailure(file=f["file"], reason=f["reason"]) for f in row[7])
    return Job(id=row[0], tenant=row[1], collection=row[2], status=row[3], files_total=row[4],
               progress=JobProgress(files_done=row[5], chunks_written=row[6], failures=failures),
               acl_groups=tuple(row[8]), metadata=dict(row[9]), error=row[10], attempt=row[11],
               created_at=row[12], started_at=row[13], finished_at=row[14], files=tuple(row[15]),
               kind=row[16], chunks_total=int(row[17]))

