"""``verity ingest --engine ray``: loading, splitting and embedding on Ray Data.

The driver lists the work (the files ``discover`` finds, or the lines of BEIR
corpora) and reads the collection's stored content hashes once. A pool of Ray
actors, each holding the embedding model, loads, hashes, splits and embeds
batches of documents, with the same loaders, splitter and embedding text as
the local engine, so chunk ids and texts are the same. Their results stream
back to the driver, which writes them through ``IngestPipeline.write_batches``:
the same store code, one transaction per document, so idempotence and
resumability hold as they do locally.

With ``RAY_ADDRESS`` set, Ray connects to that cluster (file paths must then be
readable by its workers); otherwise a local one is started for the run.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ingest.attributes import DocumentAttributes, apply_attributes
from ingest.beir import beir_document
from ingest.loaders import load_file
from ingest.pipeline import EmbeddedBatch, IngestPipeline, IngestReport, Progress, SplitDocument, discover
from ingest.splitter import TokenSplitter, embedding_text
from verity.backends.embedders import build_embedder
from verity.backends.onnx_embedder import OnnxEmbedder
from verity.core.errors import ConfigError, LoaderError
from verity.core.settings import ChunkingSettings, EmbedderSettings, default_data_dir
from verity.core.types import Document, document_id

Kind = Literal["files", "beir"]

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'verity[ray]' (ray[data]==2.60.0)"


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine runs.

    Attributes:
        workers: embedding actors (each loads the model once).
        batch_documents: documents per batch handed to an actor.
        num_cpus: CPUs of a local cluster started for the run (None: all of them);
            ignored when ``RAY_ADDRESS`` names a cluster.
    """

    workers: int = 1
    batch_documents: int = 64
    num_cpus: int | None = None


def ingest_files(
    pipeline: IngestPipeline, paths: Sequence[Path], *, collection: str, sync: bool = False,
    include: Sequence[str] = (), exclude: Sequence[str] = (),
    attributes: DocumentAttributes | None = None, progress: Progress | None = None,
    options: RayOptions = RayOptions(),
) -> IngestReport:
    """``IngestPipeline.run`` on Ray: files under ``paths`` into ``collection``.

    Raises:
        ConfigError: Ray is not installed.
    """
    report = IngestReport(collection=collection)
    files, problems = discover(paths, include=include, exclude=exclude)
    report.failed.extend(problems)
    items = [{"source": f.source, "item": str(f.path)} for f in files]
    _run(pipeline, items, kind="files", collection=collection, report=report,
         attributes=attributes, progress=progress, options=options)
    if sync and not problems:
        pipeline.remove_missing(collection, {f.source for f in files}, report)
    return report


def ingest_beir(
    pipeline: IngestPipeline, corpora: Sequence[Path], *, collection: str,
    attributes: DocumentAttributes | None = None, progress: Progress | None = None,
    options: RayOptions = RayOptions(),
) -> IngestReport:
    """BEIR corpora (folders holding ``corpus.jsonl``, or the files) into ``collection`` on Ray.

    Unlike the local engine, a malformed record fails alone (it is listed in
    the report) instead of stopping the run.

    Raises:
        ConfigError: Ray is not installed.
        LoaderError: a corpus cannot be read.
    """
    report = IngestReport(collection=collection)
    items = list(_corpus_lines(corpora))
    _run(pipeline, items, kind="beir", collection=collection, report=report,
         attributes=attributes, progress=progress, options=options)
    return report


def _corpus_lines(corpora: Sequence[Path]) -> Iterator[dict[str, str]]:
    from ingest.beir import CORPUS_FILE

    for path in corpora:
        corpus = path / CORPUS_FILE if path.is_dir() else path
        try:
            with corpus.open(encoding="utf-8-sig") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        yield {"source": f"{corpus.name}:{number}", "item": line}
        except (OSError, UnicodeDecodeError) as e:
            raise LoaderError(f"cannot read {corpus} ({type(e).__name__}); pass a BEIR dataset "
                              f"folder holding {CORPUS_FILE}, or the file itself") from e


def _run(
    pipeline: IngestPipeline, items: list[dict[str, str]], *, kind: Kind, collection: str,
    report: IngestReport, attributes: DocumentAttributes | None, progress: Progress | None,
    options: RayOptions,
) -> None:
    import time

    started = time.perf_counter()
    ray, started_here = _start_ray(options)
    try:
        store, embedder = pipeline.store, pipeline.embedder
        store.ensure_collection(collection, embed_model=embedder.name, embed_dim=embedder.dim,
                                embed_backend=embedder.settings.backend,
                                embed_precision=embedder.precision)
        # Actors on this machine reuse the ONNX export the line above made.
        data_dir = embedder.data_dir if isinstance(embedder, OnnxEmbedder) else default_data_dir()
        if items:
            dataset = ray.data.from_items(items).map_batches(
                LoadSplitEmbed, batch_size=options.batch_documents, concurrency=options.workers,
                fn_constructor_kwargs={
                    "kind": kind, "embedder": embedder.settings, "data_dir": data_dir,
                    "chunking": pipeline.chunking,
                    "fingerprint": pipeline.fingerprint,
                    "collection_key": f"{store.tenant}/{collection}",
                    "stored": ray.put(store.document_hashes(collection=collection)),
                    "attributes": attributes or DocumentAttributes(),
                })
            batches = _embedded(dataset.iter_batches(batch_size=None, batch_format="numpy"),
                                report=report, progress=progress)
            pipeline.write_batches(batches, collection=collection, report=report, progress=progress)
    finally:
        if started_here:
            ray.shutdown()
    report.seconds += time.perf_counter() - started


def _start_ray(options: RayOptions) -> tuple[Any, bool]:
    """The ``ray`` module, initialised, and whether it was initialised here.

    Raises:
        ConfigError: Ray is not installed.
    """
    try:
        import ray
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    started_here = not ray.is_initialized()
    if started_here:
        import os

        local = not os.environ.get("RAY_ADDRESS")
        # Workers of a local cluster import this very code, wherever it was imported from.
        code = str(Path(__file__).resolve().parents[1])
        ray.init(num_cpus=options.num_cpus if local else None, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": code}} if local else None)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one INFO line per dataset run
    return ray, started_here


def _embedded(batches: Iterator[dict[str, np.ndarray]], *, report: IngestReport,
              progress: Progress | None) -> Iterator[EmbeddedBatch]:
    """The actors' result rows as batches to write; unchanged and failed ones go to the report."""
    for batch in batches:
        group: EmbeddedBatch = []
        for source, status, reason, payload in zip(batch["source"], batch["status"], batch["reason"],
                                                   batch["payload"], strict=True):
            if status == "written":
                split, vectors = pickle.loads(payload)
                group.append((split, vectors))
                continue
            if status == "unchanged":
                report.unchanged.append(str(source))
            else:
                report.failed.append((str(source), str(reason)))
            if progress:
                progress(str(source), report.chunks_written)
        if group:
            yield group


class LoadSplitEmbed:
    """The Ray actor: loads the model once, then turns batches of work items into embedded documents.

    Each output row is one document: ``status`` is ``written`` (``payload``
    holds the pickled ``(SplitDocument, vectors)``), ``unchanged`` or ``failed``
    (``reason`` says why).
    """

    def __init__(self, *, kind: Kind, embedder: EmbedderSettings, data_dir: Path,
                 chunking: ChunkingSettings,
                 fingerprint: str, collection_key: str, stored: Any,
                 attributes: DocumentAttributes) -> None:
        import ray

        self.kind = kind
        self.chunking = chunking
        self.fingerprint = fingerprint
        self.collection_key = collection_key
        self.stored: dict[str, str] = ray.get(stored) if isinstance(stored, ray.ObjectRef) else stored
        self.attributes = attributes
        self.embedder = build_embedder(embedder, data_dir=data_dir)
        self.splitter = TokenSplitter(self.embedder.tokenizer, chunk_tokens=chunking.chunk_tokens,
                                      overlap_tokens=chunking.overlap_tokens)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows: dict[str, list[Any]] = {"source": [], "status": [], "reason": [], "payload": []}
        ready: list[SplitDocument] = []
        for source, item in zip(batch["source"], batch["item"], strict=True):
            try:
                document = apply_attributes(self._load(str(source), str(item)), self.attributes)
            except LoaderError as e:
                _row(rows, str(source), "failed", reason=str(e))
                continue
            split = self._split(document)
            if split is None:
                _row(rows, document.source, "unchanged")
            elif not split.chunks:
                _row(rows, document.source, "failed", reason="no text found")
            else:
                ready.append(split)
        texts = [embedding_text(c, title=s.document.title) for s in ready for c in s.chunks]
        vectors = self.embedder.embed_documents(texts)
        offset = 0
        for split in ready:
            part = vectors[offset:offset + len(split.chunks)]
            offset += len(split.chunks)
            _row(rows, split.document.source, "written", payload=pickle.dumps((split, part)))
        return rows

    def _split(self, document: Document) -> SplitDocument | None:
        """The document cut into chunks (maybe none), or None when it is stored unchanged."""
        stored = self.stored.get(document.source)
        if stored == document.content_hash:
            return None
        doc_id = document_id(collection=self.collection_key, source=document.source)
        return SplitDocument(document, stored is None, self.splitter.split(document, doc_id=doc_id))

    def _load(self, source: str, item: str) -> Document:
        if self.kind == "files":
            return load_file(Path(item), source=source, fingerprint=self.fingerprint,
                             max_bytes=int(self.chunking.max_file_mb * 1e6))
        number = int(source.rsplit(":", 1)[1])
        try:
            record = json.loads(item)
        except json.JSONDecodeError as e:
            raise LoaderError(f"line {number} is not valid JSON ({e.msg}); fix or remove it") from e
        return beir_document(record, number=number, fingerprint=self.fingerprint)


def _row(rows: dict[str, list[Any]], source: str, status: str, *, reason: str = "",
         payload: bytes = b"") -> None:
    rows["source"].append(source)
    rows["status"].append(status)
    rows["reason"].append(reason)
    rows["payload"].append(payload)
