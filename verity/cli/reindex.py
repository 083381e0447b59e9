"""``verity reindex``: rebuild the FAISS accelerator's files from Postgres; with
``--re-embed``, first compute every chunk's vector again with the configured embedder."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Annotated

import typer

from verity.cli.common import clean_errors, configure_logging, fail, load_settings
from verity.core.settings import validate_collection_name

if TYPE_CHECKING:
    from verity.answering.runtime import Runtime


@clean_errors
def reindex(
    collection: Annotated[str | None, typer.Option(
        "--collection", "-c", help="rebuild only this collection (default: all)")] = None,
    re_embed: Annotated[bool, typer.Option(
        "--re-embed", help="first re-embed every chunk with the configured embedder (backend "
                           "and precision; the model stays), as a job")] = False,
) -> None:
    """Rebuild the FAISS accelerator's files from Postgres and print the counts."""
    from verity.answering.runtime import open_runtime
    from verity.backends.stores.faiss_index import FaissAccelerator

    configure_logging(logging.WARNING)
    settings = load_settings()
    with open_runtime(settings, generator=False, reranker=False) as runtime:
        names = ([validate_collection_name(collection)] if collection
                 else [s.name for s in runtime.store.stats()])
        if not names:
            typer.echo("no collections to reindex (run `verity ingest PATH` first)")
            return
        if re_embed:
            for name in names:
                _re_embed(runtime, name)
        accelerator = FaissAccelerator(runtime.db, data_dir=settings.data_dir,
                                       settings=settings.faiss)
        for name in names:
            started = time.perf_counter()
            index = accelerator.reindex(name)
            in_postgres = accelerator.manifest(name).chunk_count
            typer.echo(f"collection {name}: {in_postgres} chunks in Postgres, {len(index)} in FAISS "
                       f"({index.kind} binary index, {time.perf_counter() - started:.1f} s) "
                       f"-> {accelerator.directory(name)}")


def _re_embed(runtime: Runtime, name: str) -> None:
    """Queue a re-embed job for the collection and run it here, printing its progress."""
    from ingest.worker import IngestWorker
    from verity.backends.stores.jobs import JobQueue
    from verity.backends.stores.reembed import Embedding, check_reembed

    e, tenant = runtime.embedder, runtime.store.tenant
    target = Embedding(model=e.name, dim=e.dim, backend=e.settings.backend, precision=e.precision)
    total = check_reembed(runtime.db, tenant=tenant, name=name, target=target)
    queue = JobQueue(runtime.db)
    job_id = queue.enqueue_reembed(tenant=tenant, collection=name, chunks_total=total,
                                   backend=target.backend, precision=target.precision)
    worker = IngestWorker(db=runtime.db, embedder=e, chunking=runtime.settings.chunking,
                          settings=runtime.settings.worker)
    job = queue.claim(worker=worker.name, job_id=job_id)
    ended = None if job is None else worker.run(job)
    if ended is None or ended.status != "done":
        reason = ended.error if ended is not None and ended.error else "it did not finish"
        raise fail(f"re-embedding {name} failed: {reason}")
    typer.echo(f"collection {name}: {ended.progress.chunks_written} chunks re-embedded into "
               f"{target.precision} vectors ({target.backend}); job {job_id}")
