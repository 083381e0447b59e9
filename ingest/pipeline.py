"""The ingestion pipeline: discover files, load, split, embed, write.

Per document it is all or nothing: a document's row and all its chunks are
written in one transaction, and a document whose content hash (which covers
its metadata and groups too) is already stored is skipped. So a run killed at
any point and started again ends with exactly the rows a clean run gives.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ingest.attributes import DocumentAttributes, apply_attributes, is_sidecar
from ingest.loaders import LOADERS, load_file, printable_name
from ingest.splitter import TokenSplitter, embedding_text
from verity.backends.embedders import LocalEmbedder
from verity.core.errors import LoaderError, RagError, StoreUnavailable
from verity.core.protocols import DocumentWrite, Store
from verity.core.settings import ChunkingSettings
from verity.core.types import Chunk, Document, document_id

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What a run did, document by document."""

    collection: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks_written: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["failed"] = [{"source": s, "reason": r} for s, r in self.failed]
        return data

    def summary(self) -> str:
        return (f"{self.collection}: {len(self.added)} added, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, "
                f"{len(self.failed)} failed; {self.chunks_written} chunks written "
                f"in {self.seconds:.1f}s")


@dataclass(frozen=True)
class SourceFile:
    path: Path
    source: str


def discover(
    paths: Sequence[Path], *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """Files under ``paths`` (recursively) with a known suffix, plus paths that could not be read.

    A file's source name is its path relative to the parent of the argument it
    was found under (``docs/api.md`` for ``verity ingest ./docs``), so the name
    does not depend on the working directory; bytes of a name that are not UTF-8 are
    escaped (:func:`printable_name`). Sidecars (``NAME.meta.json``) are never
    documents themselves.
    """
    found: dict[str, SourceFile] = {}
    problems: list[tuple[str, str]] = []
    for root in paths:
        if not root.exists():
            problems.append((str(root), "no such file or directory"))
            continue
        base = root.resolve().parent
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            source = printable_name(path.resolve().relative_to(base).as_posix())
            if not _selected(source, include=include, exclude=exclude, explicit=path == root):
                continue
            found.setdefault(source, SourceFile(path, source))
    return list(found.values()), problems


def _selected(source: str, *, include: Sequence[str], exclude: Sequence[str], explicit: bool) -> bool:
    if is_sidecar(source) or any(fnmatch.fnmatch(source, pat) for pat in exclude):
        return False
    if include:
        return any(fnmatch.fnmatch(source, pat) for pat in include)
    if any(part.startswith(".") for part in source.split("/")):
        return False
    return explicit or Path(source).suffix.lower() in LOADERS


Progress = Callable[[str, int], None]


_SPLITTERS: weakref.WeakKeyDictionary[LocalEmbedder, dict[tuple[int, int], TokenSplitter]] = \
    weakref.WeakKeyDictionary()
_SPLITTERS_LOCK = threading.Lock()


def shared_splitter(embedder: LocalEmbedder, *, chunk_tokens: int, overlap_tokens: int) -> TokenSplitter:
    """The splitter every pipeline of this process uses with ``embedder``'s tokenizer.

    It splits with a copy of the tokenizer, since splitting runs in a thread beside the
    embedder and a fast tokenizer must not be used by two threads at once. The copy is
    made once, not per pipeline: it holds the interpreter for about 35 ms, which every
    upload job paid, and other requests waited for (docs/BENCHMARKS.md, "Load").
    """
    with _SPLITTERS_LOCK:
        by_size = _SPLITTERS.setdefault(embedder, {})
        if (chunk_tokens, overlap_tokens) not in by_size:
            by_size[chunk_tokens, overlap_tokens] = TokenSplitter(
                copy.deepcopy(embedder.tokenizer), chunk_tokens=chunk_tokens,
                overlap_tokens=overlap_tokens)
        return by_size[chunk_tokens, overlap_tokens]


class IngestPipeline:
    """Loads files into one collection.

    Example:
        >>> pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
        >>> report = pipeline.run([Path("docs")], collection="default")
    """

    def __init__(
        self, *, store: Store, embedder: LocalEmbedder,
        chunking: ChunkingSettings,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.chunking = chunking
        self._splitter: TokenSplitter | None = None
        self.batch_chunks = 512

    @property
    def fingerprint(self) -> str:
        """Settings that change the stored chunks; part of every content hash."""
        c = self.chunking
        # Torch's vectors predate the backend setting: their fingerprint is kept as it was, so
        # existing collections are not re-embedded; a change of backend re-embeds every document.
        settings = self.embedder.settings
        vectors = "" if settings.backend == "torch" else f"|{settings.backend}-{self.embedder.precision}"
        return f"{self.embedder.name}{vectors}|{c.chunk_tokens}|{c.overlap_tokens}|v2"

    @property
    def splitter(self) -> TokenSplitter:
        if self._splitter is None:
            self._splitter = shared_splitter(self.embedder, chunk_tokens=self.chunking.chunk_tokens,
                                             overlap_tokens=self.chunking.overlap_tokens)
        return self._splitter

    def run(
        self, paths: Sequence[Path], *, collection: str, sync: bool = False,
        include: Sequence[str] = (), exclude: Sequence[str] = (),
        attributes: DocumentAttributes | None = None, progress: Progress | None = None,
    ) -> IngestReport:
        """Ingest every file under ``paths``; with ``sync``, delete documents whose file is gone.

        ``attributes`` (metadata and groups) apply to every document, merged with
        its sidecar's.
        """
        started = time.perf_counter()
        report = IngestReport(collection=collection)
        files, problems = discover(paths, include=include, exclude=exclude)
        report.failed.extend(problems)
        self.ingest_documents(self._load(files, report), collection=collection, report=report,
                              attributes=attributes, progress=progress)
        if sync and not problems:
            self.remove_missing(collection, {f.source for f in files}, report)
        report.seconds = time.perf_counter() - started
        return report

    def ingest_documents(
        self, documents: Iterable[Document], *, collection: str,
        report: IngestReport | None = None, attributes: DocumentAttributes | None = None,
        progress: Progress | None = None, before_write: Callable[[], None] | None = None,
    ) -> IngestReport:
        """Split, embed and write already-loaded documents (files, BEIR records, API uploads).

        ``attributes`` are merged into every document (its own metadata keys
        win, groups are unioned) and its content hash then covers them, so a
        change of metadata or groups rewrites the document. Chunks of several
        documents are embedded together in batches of about ``batch_chunks``
        (the embedder sorts each batch by length, so little is padded), then
        written together (``Store.write_documents``: each document atomic, one
        that fails does not keep the others out).

        Three stages overlap: a thread reads, hashes and splits documents, the
        calling thread embeds, and another thread writes (binary COPY). The
        queues between them are short, so memory stays bounded. ``before_write``
        is called before each batch is written; what it raises stops the
        ingestion there (a cancelled job writes no further batch).

        Raises:
            LoaderError: raised by ``documents`` itself (a malformed BEIR corpus,
                say); the batches embedded before it stay written.
            EmbedderError: embedding failed; the batches embedded before it stay written.
            StoreUnavailable: the database went away; the batches written before it stay
                written, and running the same ingestion again resumes.
        """
        started = time.perf_counter()
        report = report or IngestReport(collection=collection)
        self.store.ensure_collection(collection, embed_model=self.embedder.name,
                                     embed_dim=self.embedder.dim,
                                     embed_backend=self.embedder.settings.backend,
                                     embed_precision=self.embedder.precision)
        prepared = (self._prepare(apply_attributes(d, attributes or DocumentAttributes()),
                                  collection=collection, report=report, progress=progress)
                    for d in documents)
        self.write_batches(self._embed_batches(prepared), collection=collection, report=report,
                           progress=progress, before_write=before_write)
        report.seconds += time.perf_counter() - started
        return report

    def write_batches(
        self, batches: Iterable[EmbeddedBatch], *, collection: str, report: IngestReport,
        progress: Progress | None = None, before_write: Callable[[], None] | None = None,
    ) -> None:
        """Write embedded batches, a batch at a time, in a thread beside ``batches``.

        The Ray engine feeds this with the batches its workers embedded, so both
        engines write through the same code. The writes are one ``Store.bulk_load``:
        into an empty collection, its vector index is built once at the end.
        """
        handoff: queue.Queue[EmbeddedBatch | None] = queue.Queue(maxsize=2)
        with (self.store.bulk_load(collection),
              ThreadPoolExecutor(1, thread_name_prefix="verity-ingest-write") as pool):
            writing = pool.submit(self._write_from, handoff, collection, report, progress,
                                  before_write)
            try:
                for batch in batches:
                    if not _put(handoff, batch, stopped=writing.done):
                        break  # the writer failed; its error is raised below
            finally:
                _put(handoff, None, stopped=writing.done)
                try:
                    writing.result()
                finally:
                    close = getattr(batches, "close", None)
                    if close is not None:
                        close()  # stops the threads reading ahead of it

    def _embed_batches(self, prepared: Iterable[SplitDocument | None]) -> Iterator[EmbeddedBatch]:
        """Batches of whole documents with their chunk vectors, read ahead in a thread."""
        with contextlib.closing(_read_ahead(_batches(prepared, self.batch_chunks))) as ready:
            yield from self._embed_each(ready)

    def _embed_each(self, ready: Iterable[list[SplitDocument]]) -> Iterator[EmbeddedBatch]:
        for pending in ready:
            texts = [embedding_text(c, title=p.document.title) for p in pending for c in p.chunks]
            vectors = self.embedder.embed_documents(texts)
            offset = 0
            batch = []
            for p in pending:
                batch.append((p, vectors[offset:offset + len(p.chunks)]))
                offset += len(p.chunks)
            yield batch

    def _prepare(self, document: Document, *, collection: str, report: IngestReport,
                 progress: Progress | None) -> SplitDocument | None:
        """The document split into chunks, or None when it is unchanged or has no text."""
        stored = self.store.document_hash(collection=collection, source=document.source)
        if stored == document.content_hash:
            report.unchanged.append(document.source)
            if progress:
                progress(document.source, report.chunks_written)
            return None
        doc_id = document_id(collection=f"{self.store.tenant}/{collection}", source=document.source)
        chunks = self.splitter.split(document, doc_id=doc_id)
        if not chunks:
            report.failed.append((document.source, "no text found"))
            return None
        return SplitDocument(document, stored is None, chunks)

    def _load(self, files: Sequence[SourceFile], report: IngestReport) -> Iterator[Document]:
        for file in files:
            try:
                yield load_file(file.path, source=file.source,
                                max_bytes=int(self.chunking.max_file_mb * 1e6),
                                fingerprint=self.fingerprint)
            except LoaderError as e:
                report.failed.append((file.source, str(e)))
                log.warning("skipped %s: %s", file.source, e)

    def _write_from(self, handoff: queue.Queue[EmbeddedBatch | None], collection: str,
                    report: IngestReport, progress: Progress | None,
                    before_write: Callable[[], None] | None = None) -> None:
        while (batch := handoff.get()) is not None:
            if before_write is not None:
                before_write()
            writes = [DocumentWrite(self._kept(p.document), p.chunks, vectors)
                      for p, vectors in batch]
            try:
                # Checked again in every batch's transaction: a re-embed started since the
                # run began accepts only its target's vectors.
                results = self.store.write_documents(
                    collection=collection, documents=writes,
                    vectors=(self.embedder.settings.backend, self.embedder.precision))
            except RagError as e:
                results = [e] * len(writes)
            outage = next((r for r in results if isinstance(r, StoreUnavailable)), None)
            if outage is not None:  # no fault of these documents: the run stops, to be resumed
                raise outage
            for (p, _), result in zip(batch, results, strict=True):
                if isinstance(result, RagError):
                    report.failed.append((p.document.source, str(result)))
                    continue
                (report.added if p.new else report.updated).append(p.document.source)
                report.chunks_written += len(p.chunks)
                if progress:
                    progress(p.document.source, report.chunks_written)

    def _kept(self, document: Document) -> Document:
        """``document`` without its original file when that is over ``keep_file_mb``."""
        original = document.original
        if original is None or len(original.content) <= self.chunking.keep_file_mb * 1e6:
            return document
        log.info("%s: the file is %.1f MB, over the %.1f MB kept; its chunks are written "
                 "without it", document.source, len(original.content) / 1e6,
                 self.chunking.keep_file_mb)
        return replace(document, original=None)

    def remove_missing(self, collection: str, present: set[str], report: IngestReport) -> None:
        """Delete the collection's documents whose source is not in ``present`` (``--sync``)."""
        for source in self.store.list_sources(collection=collection):
            if source not in present and self.store.delete_document(collection=collection,
                                                                     source=source):
                report.removed.append(source)


@dataclass(frozen=True)
class SplitDocument:
    """A document cut into chunks, ready to embed; ``new`` if no version of it is stored yet."""

    document: Document
    new: bool
    chunks: list[Chunk]


EmbeddedBatch = list[tuple[SplitDocument, np.ndarray]]
"""Whole documents with their chunks' vectors, in document order."""

T = TypeVar("T")


def _batches(prepared: Iterable[SplitDocument | None], size: int) -> Iterator[list[SplitDocument]]:
    """Documents grouped until they hold at least ``size`` chunks; a document is never split."""
    batch: list[SplitDocument] = []
    chunks = 0
    for item in prepared:
        if item is None:
            continue
        batch.append(item)
        chunks += len(item.chunks)
        if chunks >= size:
            yield batch
            batch, chunks = [], 0
    if batch:
        yield batch


def _read_ahead(items: Iterable[T], *, depth: int = 2) -> Generator[T, None, None]:
    """``items``, produced by a background thread up to ``depth`` ahead of the consumer.

    An exception raised while producing is raised here after the items before
    it. When the consumer stops early, the producer stops at its next item.
    """
    handoff: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(handoff, (True, item), stopped=stop.is_set):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            _put(handoff, (False, e), stopped=stop.is_set)
            return
        _put(handoff, (False, None), stopped=stop.is_set)

    thread = threading.Thread(target=produce, name="verity-ingest-read", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = handoff.get()
            if not ok:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        thread.join()


def _put(handoff: queue.Queue[Any], item: Any, *, stopped: Callable[[], bool]) -> bool:
    """Put ``item`` unless ``stopped()`` turns true first (the other side is gone); whether it was put."""
    while not stopped():
        try:
            handoff.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
