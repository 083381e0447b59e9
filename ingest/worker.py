"""The ingestion worker: claims queued jobs, uploads (run through the pipeline) and
re-embeds of a collection (run by :class:`ingest.reembed.Reembedder` with this worker's
embedder, which must be the one the job asked for).

It runs as a background thread of ``verity serve`` or on its own as ``verity
worker``; any number of workers may share one database. Each job's files are
written to a temporary directory and loaded like files on disk, with the
upload's file name as the document's source and the job's groups and metadata
on every document. A file that cannot be read becomes a per-file failure;
only a problem with the whole job (such as a collection built with another
embedder) fails it. A database outage fails nothing: the job goes back to the
queue as soon as the database answers again, and runs again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from ingest.loaders import load_file
from ingest.pipeline import IngestPipeline, IngestReport
from ingest.reembed import Reembedder
from verity.backends.embedders import LocalEmbedder
from verity.backends.stores.database import Database
from verity.backends.stores.factory import build_store
from verity.backends.stores.jobs import JobQueue
from verity.core.errors import LoaderError, RagError, StoreUnavailable
from verity.core.settings import ChunkingSettings, WorkerSettings
from verity.core.types import Document, FileFailure, Job, JobProgress, UploadedFile

log = logging.getLogger(__name__)
T = TypeVar("T")

NOTHING_INGESTED = "no file could be ingested; see the failures of each file"
INTERNAL_ERROR = "internal error while ingesting; the worker's log has the details"


class WorkerStopping(Exception):
    """Raised inside a job when the worker was asked to stop; the job goes back to the queue."""


class JobLost(Exception):
    """Raised inside a job whose progress report no longer matched: cancelled, or given to another worker."""


class IngestWorker:
    """Runs queued ingestion jobs, one at a time.

    Example:
        >>> worker = IngestWorker(db=db, embedder=embedder, chunking=settings.chunking,
        ...                       settings=settings.worker)
        >>> worker.run_pending()        # every queued job, then return
        >>> with worker.running():      # or: a background thread until the block ends
        ...     serve()
    """

    def __init__(self, *, db: Database, embedder: LocalEmbedder,
                 chunking: ChunkingSettings, settings: WorkerSettings,
                 name: str | None = None) -> None:
        self.queue = JobQueue(db)
        self.db = db
        self.embedder = embedder
        self.chunking = chunking
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()

    def run_once(self) -> Job | None:
        """Claim one queued job and run it.

        Returns:
            The job as it ended, or None when no job was queued (or it went back
            to the queue because the worker is stopping or the database went away).
        """
        job = self.queue.claim(worker=self.name)
        return None if job is None else self.run(job)

    def run(self, job: Job) -> Job | None:
        """Run a job this worker claimed, to its end.

        Returns:
            The job as it ended, or None when it went back to the queue because the
            worker is stopping.
        """
        if job.kind == "reembed":
            return self._run_reembed(job)
        log.info("job %s: ingesting %d files into %s/%s", job.id, job.files_total, job.tenant,
                 job.collection)
        try:
            report = self._execute(job)
        except (WorkerStopping, JobLost) as e:
            return self._interrupted(job, e)
        except StoreUnavailable as e:
            # An outage is no fault of the files: the job runs again once the database is
            # back, and what was written before it is found unchanged.
            log.warning("job %s: %s; it goes back to the queue", job.id, e)
            self._until_back(lambda: self.queue.release(job))
            return None
        except RagError as e:
            return self._end(job, IngestReport(collection=job.collection), error=str(e))
        except Exception:
            log.exception("job %s failed", job.id)
            return self._end(job, IngestReport(collection=job.collection), error=INTERNAL_ERROR)
        ingested = len(report.added) + len(report.updated) + len(report.unchanged)
        return self._end(job, report, error=None if ingested else NOTHING_INGESTED)

    def _interrupted(self, job: Job, e: WorkerStopping | JobLost) -> Job | None:
        """A job stopped by this worker's shutdown (back in the queue: None) or taken from it
        (cancelled, or given to another worker: the job as it is now)."""
        if isinstance(e, WorkerStopping):
            self.queue.release(job)
            log.info("job %s: back in the queue, the worker is stopping", job.id)
            return None
        log.info("job %s: cancelled or given to another worker; stopped", job.id)
        return self.queue.get(job.id, tenant=job.tenant)

    def _run_reembed(self, job: Job) -> Job | None:
        log.info("job %s: re-embedding %s/%s", job.id, job.tenant, job.collection)
        done = 0

        def progress(chunks: int, total: int) -> None:
            nonlocal done
            done = chunks
            if self._stop.is_set():
                raise WorkerStopping
            if not self.queue.report_chunks(job, done=chunks, total=total):
                raise JobLost(job.id)

        error: str | None = None
        reembedder = Reembedder(self.db, self.embedder)
        asked = (job.metadata.get("backend"), job.metadata.get("precision"))
        if asked != (reembedder.target.backend, reembedder.target.precision):
            return self.queue.end(job, JobProgress(), error=(
                f"the re-embed asked for {asked[1]} vectors ({asked[0]}), and this worker "
                f"embeds {reembedder.target.precision} ones ({reembedder.target.backend}): run "
                "it on a worker with the service's embedder settings"))
        try:
            report = reembedder.run(
                tenant=job.tenant, collection=job.collection, progress=progress)
            done = report.total
            self.queue.report_chunks(job, done=done, total=done)
        except (WorkerStopping, JobLost) as e:
            return self._interrupted(job, e)
        except RagError as e:
            error = str(e)
        except Exception:
            log.exception("job %s failed", job.id)
            error = INTERNAL_ERROR
        ended = self.queue.end(job, JobProgress(chunks_written=done), error=error)
        if ended is not None:
            log.info("job %s %s", job.id, ended.status)
        return ended

    def run_pending(self) -> int:
        """Run queued jobs until none is left (or the worker is stopped); returns how many ran."""
        ran = 0
        while not self._stop.is_set() and self.run_once() is not None:
            ran += 1
        return ran

    def run_forever(self) -> None:
        """Poll for jobs until :meth:`stop`; errors are logged and the loop goes on."""
        while not self._stop.is_set():
            try:
                self.queue.requeue_stale(stale_after_s=self.settings.stale_after_s,
                                         max_attempts=self.settings.max_attempts)
                if self.run_pending():
                    continue
            except RagError as e:
                log.warning("ingestion worker: %s", e)
            except Exception:
                log.exception("ingestion worker: unexpected error; retrying")
            self._stop.wait(self.settings.poll_interval_s)

    def stop(self) -> None:
        """Ask the worker to stop after the current file; an unfinished job is requeued."""
        self._stop.set()

    @contextmanager
    def running(self, *, join_timeout_s: float = 30.0) -> Iterator[threading.Thread]:
        """Run :meth:`run_forever` in a background thread for the duration of the block."""
        self._stop.clear()
        thread = threading.Thread(target=self.run_forever, name="verity-ingest-worker",
                                  daemon=True)
        thread.start()
        try:
            yield thread
        finally:
            self.stop()
            thread.join(join_timeout_s)
            if thread.is_alive():
                log.warning("the ingestion worker did not stop within %.0fs", join_timeout_s)
            else:
                self._stop.clear()  # the worker may be run again

    def _execute(self, job: Job) -> IngestReport:
        pipeline = IngestPipeline(store=build_store(self.db, tenant=job.tenant),
                                  embedder=self.embedder, chunking=self.chunking)
        report = IngestReport(collection=job.collection)

        def progress(source: str, chunks: int) -> None:
            if not self.queue.report(job, _progress(report)):
                raise JobLost(job.id)

        files = self.queue.files(job)
        with tempfile.TemporaryDirectory(prefix="verity-job-") as tmp:
            documents = self._load(job, files, Path(tmp), report, pipeline.fingerprint)
            pipeline.ingest_documents(documents, collection=job.collection, report=report,
                                      progress=progress,
                                      before_write=lambda: progress("", report.chunks_written))
        return report

    def _load(self, job: Job, files: Sequence[UploadedFile], tmp: Path, report: IngestReport,
              fingerprint: str) -> Iterator[Document]:
        # Groups and metadata are part of the content hash: uploading the same bytes with
        # other groups or metadata must update the stored document, not skip it.
        fingerprint += "|" + json.dumps([sorted(job.acl_groups), job.metadata], sort_keys=True)
        for i, upload in enumerate(files):
            if self._stop.is_set():
                raise WorkerStopping
            try:
                document = self._load_one(upload, tmp / f"{i:05d}", fingerprint)
            except LoaderError as e:
                report.failed.append((upload.name, str(e)))
                continue
            yield replace(document, acl_groups=job.acl_groups, metadata=job.metadata)

    def _load_one(self, upload: UploadedFile, folder: Path, fingerprint: str) -> Document:
        folder.mkdir()
        path = folder / Path(upload.name).name
        path.write_bytes(upload.data)
        try:
            return load_file(path, source=upload.name, fingerprint=fingerprint,
                             max_bytes=int(self.chunking.max_file_mb * 1e6))
        except LoaderError:
            raise
        except Exception as e:  # a malformed file must not fail the whole job
            log.warning("could not load %s", upload.name, exc_info=True)
            raise LoaderError(f"unreadable file ({type(e).__name__})") from e
        finally:
            path.unlink(missing_ok=True)

    def _until_back(self, action: Callable[[], T]) -> T | None:
        """``action()``, tried again every poll interval while the database is unavailable.

        Returns:
            What it returned, or None if the worker was stopped first (a job it held is
            then requeued once stale).
        """
        while True:
            try:
                return action()
            except StoreUnavailable as e:
                log.warning("ingestion worker: %s; trying again", e)
                if self._stop.wait(self.settings.poll_interval_s):
                    return None

    def _end(self, job: Job, report: IngestReport, *, error: str | None) -> Job | None:
        ended = self._until_back(lambda: self.queue.end(job, _progress(report), error=error))
        if ended is None:
            log.warning("job %s was given to another worker meanwhile; result dropped", job.id)
        else:
            log.info("job %s %s: %s", job.id, ended.status, report.summary())
        return ended


def _progress(report: IngestReport) -> JobProgress:
    done = len(report.added) + len(report.updated) + len(report.unchanged) + len(report.failed)
    return JobProgress(files_done=done, chunks_written=report.chunks_written,
                       failures=tuple(FileFailure(file=s, reason=r) for s, r in report.failed))
