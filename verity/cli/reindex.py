"""``verity reindex``: rebuild the FAISS accelerator's files from Postgres."""

from __future__ import annotations

import logging
import time
from typing import Annotated

import typer

from verity.cli.common import clean_errors, configure_logging, load_settings
from verity.core.settings import validate_collection_name


@clean_errors
def reindex(
    collection: Annotated[str | None, typer.Option(
        "--collection", "-c", help="rebuild only this collection (default: all)")] = None,
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
        accelerator = FaissAccelerator(runtime.db, data_dir=settings.data_dir,
                                       settings=settings.faiss)
        for name in names:
            started = time.perf_counter()
            index = accelerator.reindex(name)
            in_postgres = accelerator.manifest(name).chunk_count
            typer.echo(f"collection {name}: {in_postgres} chunks in Postgres, {len(index)} in FAISS "
                       f"({index.kind} binary index, {time.perf_counter() - started:.1f} s) "
                       f"-> {accelerator.directory(name)}")
