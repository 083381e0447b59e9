"""``verity ingest``: load, split, embed and store documents."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from verity.cli.common import (
    EXIT_FAILED,
    CollectionOpt,
    clean_errors,
    collection_or_default,
    configure_logging,
    fail,
    load_settings,
)

if TYPE_CHECKING:
    from ingest.attributes import DocumentAttributes
    from ingest.pipeline import IngestPipeline, IngestReport
    from verity.core.types import Document


class IngestFormat(StrEnum):
    """What the paths given to ``verity ingest`` are."""

    files = "files"
    beir = "beir"


class IngestEngine(StrEnum):
    """Where ``verity ingest`` loads, splits and embeds."""

    local = "local"
    ray = "ray"


PathsArg = Annotated[list[Path], typer.Argument(
    help="files or directories (recursive); with --format beir, BEIR dataset folders "
         "or corpus.jsonl files")]
FormatOpt = Annotated[IngestFormat, typer.Option(
    "--format", help="files: documents by suffix; beir: one document per corpus.jsonl "
                     "record")]
SyncOpt = Annotated[bool, typer.Option(help="delete documents whose files are gone")]
IncludeOpt = Annotated[list[str] | None, typer.Option(help="glob of sources to include")]
ExcludeOpt = Annotated[list[str] | None, typer.Option(help="glob of sources to skip")]
GroupOpt = Annotated[list[str] | None, typer.Option(
    help="ACL group for every document (repeatable; unioned with sidecar groups)")]
MetaOpt = Annotated[list[str] | None, typer.Option(
    help="KEY=VALUE metadata for every document (repeatable; sidecar values win)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON summary")]
EngineOpt = Annotated[IngestEngine, typer.Option(
    help="local: threads in this process; ray: load, split and embed on Ray Data (a local "
         "cluster, or the one RAY_ADDRESS names); both write through the same code")]
RayWorkersOpt = Annotated[int, typer.Option(
    min=1, help="with --engine ray: embedding actors, each holding the model")]
ProgressEveryOpt = Annotated[float, typer.Option(
    "--progress-every", min=0, help="off a terminal: seconds between progress log lines "
                                    "(a terminal gets a progress bar)")]


@clean_errors
def ingest(
    paths: PathsArg,
    collection: CollectionOpt = None,
    fmt: FormatOpt = IngestFormat.files,
    sync: SyncOpt = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    group: GroupOpt = None,
    meta: MetaOpt = None,
    as_json: JsonOpt = False,
    engine: EngineOpt = IngestEngine.local,
    ray_workers: RayWorkersOpt = 1,
    progress_every: ProgressEveryOpt = 5.0,
) -> None:
    """Load, split, embed and store documents. Unchanged files are skipped.

    A file NAME may have a sidecar NAME.meta.json with {"metadata": {...}, "groups": [...]}.
    """
    from ingest.pipeline import IngestPipeline
    from verity.answering.runtime import open_runtime

    configure_logging(logging.WARNING)
    if fmt is IngestFormat.beir and (sync or include or exclude):
        raise fail("--sync, --include and --exclude work with --format files only; "
                   "leave them out for BEIR corpora")
    attributes = _attributes(group or [], meta or [])
    settings = load_settings()
    name = collection_or_default(collection, settings)
    with open_runtime(settings, generator=False, reranker=False) as runtime:
        pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                                  chunking=settings.chunking)
        if fmt is IngestFormat.beir:
            report = _ingest_beir(pipeline, paths, name, attributes, engine=engine,
                                  ray_workers=ray_workers, every_s=progress_every)
        else:
            report = _ingest_files(pipeline, paths, name, attributes, engine=engine,
                                   ray_workers=ray_workers, every_s=progress_every, sync=sync,
                                   include=include or [], exclude=exclude or [])
    for source, reason in report.failed:
        typer.echo(f"failed: {source}: {reason}", err=True)
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _ingest_beir(pipeline: IngestPipeline, paths: list[Path], collection: str,
                 attributes: DocumentAttributes, *, engine: IngestEngine, ray_workers: int,
                 every_s: float) -> IngestReport:
    """Every BEIR corpus in ``paths``, one document per record."""
    if engine is IngestEngine.local:
        run: Any = functools.partial(pipeline.ingest_documents,
                                     _beir_documents(paths, pipeline.fingerprint))
    else:
        ray = _ray_engine()
        run = functools.partial(ray.ingest_beir, pipeline, paths,
                                options=ray.RayOptions(workers=ray_workers))
    return _with_progress(functools.partial(run, collection=collection, attributes=attributes),
                          total=_beir_size(paths), every_s=every_s)


def _ingest_files(pipeline: IngestPipeline, paths: list[Path], collection: str,
                  attributes: DocumentAttributes, *, engine: IngestEngine, ray_workers: int,
                  every_s: float, sync: bool, include: list[str],
                  exclude: list[str]) -> IngestReport:
    """The files in ``paths`` (recursively) that the globs select."""
    from ingest.pipeline import discover

    run: Any = pipeline.run
    if engine is IngestEngine.ray:
        ray = _ray_engine()
        run = functools.partial(ray.ingest_files, pipeline,
                                options=ray.RayOptions(workers=ray_workers))
    return _with_progress(functools.partial(
        run, paths, collection=collection, sync=sync, include=include, exclude=exclude,
        attributes=attributes),
        total=len(discover(paths, include=include, exclude=exclude)[0]), every_s=every_s)


def _with_progress(run: Any, *, total: int | None, every_s: float) -> IngestReport:
    """Call ``run(progress=...)`` with ingestion progress shown on stderr."""
    from ingest.progress import document_done, ingest_progress

    with ingest_progress(total=total, every_s=every_s) as reporter:
        report: IngestReport = run(progress=document_done(reporter))
    return report


def _ray_engine() -> Any:
    """``ingest.ray_engine``, which imports Ray only when it runs."""
    from ingest import ray_engine

    return ray_engine


def _attributes(groups: list[str], meta: list[str]) -> DocumentAttributes:
    """``--group`` and ``--meta KEY=VALUE`` options as DocumentAttributes."""
    from ingest.attributes import DocumentAttributes, clean_groups

    metadata: dict[str, str] = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--meta expects KEY=VALUE, got {item!r}")
        metadata[key.strip()] = value
    try:
        return DocumentAttributes(metadata=metadata, groups=clean_groups(groups))
    except ValueError as e:
        raise fail(f"--group: {e}") from None


def _beir_documents(paths: list[Path], fingerprint: str) -> Iterator[Document]:
    """The documents of every BEIR corpus in ``paths``, one corpus after another."""
    from ingest.beir import load_beir_corpus

    for path in paths:
        yield from load_beir_corpus(path, fingerprint=fingerprint)


def _beir_size(paths: list[Path]) -> int | None:
    """How many records the BEIR corpora hold (non-empty lines), or None if one is unreadable."""
    from ingest.beir import CORPUS_FILE

    total = 0
    for path in paths:
        corpus = path / CORPUS_FILE if path.is_dir() else path
        try:
            with corpus.open("rb") as f:
                total += sum(1 for line in f if line.strip())
        except OSError:
            return None
    return total
