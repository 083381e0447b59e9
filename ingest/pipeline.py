"""The ingestion pipeline: discover files, load, split, embed, write.

Per document it is all or nothing: a document's row and all its chunks are
written in one transaction, and a document whose content hash (which covers
its metadata and groups too) is already stored is skipped. So a run killed at
any point and started again ends with exactly the rows a clean run gives.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.embedders import SentenceTransformerEmbedder
from core.errors import LoaderError, RagError
from core.settings import ChunkingSettings
from core.stores.pgvector_store import PgvectorStore
from core.types import Chunk, Document, document_id
from ingest.attributes import DocumentAttributes, apply_attributes, is_sidecar
from ingest.loaders import LOADERS, load_file
from ingest.splitter import TokenSplitter, embedding_text

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
    does not depend on the working directory. Sidecars (``NAME.meta.json``) are
    never documents themselves.
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
            source = path.resolve().relative_to(base).as_posix()
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


class IngestPipeline:
    """Loads files into one collection.

    Example:
        >>> pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
        >>> report = pipeline.run([Path("docs")], collection="default")
    """

    def __init__(
        self, *, store: PgvectorStore, embedder: SentenceTransformerEmbedder,
        chunking: ChunkingSettings,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.chunking = chunking
        self._splitter: TokenSplitter | None = None
        self.batch_chunks = 256

    @property
    def fingerprint(self) -> str:
        """Settings that change the stored chunks; part of every content hash."""
        c = self.chunking
        return f"{self.embedder.name}|{c.chunk_tokens}|{c.overlap_tokens}|v2"

    @property
    def splitter(self) -> TokenSplitter:
        if self._splitter is None:
            self._splitter = TokenSplitter(self.embedder.tokenizer,
                                           chunk_tokens=self.chunking.chunk_tokens,
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
            self._remove_missing(collection, {f.source for f in files}, report)
        report.seconds = time.perf_counter() - started
        return report

    def ingest_documents(
        self, documents: Iterable[Document], *, collection: str,
        report: IngestReport | None = None, attributes: DocumentAttributes | None = None,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Split, embed and write already-loaded documents (files, BEIR records, API uploads).

        ``attributes`` are merged into every document (its own metadata keys
        win, groups are unioned) and its content hash then covers them, so a
        change of metadata or groups rewrites the document. Chunks of several
        documents are embedded together in batches of about ``batch_chunks``,
        then each document is written in its own transaction.

        Raises:
            LoaderError: raised by ``documents`` itself (a malformed BEIR corpus,
                say); the documents flushed before it stay written.
        """
        started = time.perf_counter()
        report = report or IngestReport(collection=collection)
        run_attributes = attributes or DocumentAttributes()
        self.store.ensure_collection(collection, embed_model=self.embedder.name,
                                     embed_dim=self.embedder.dim)
        pending: list[_Pending] = []
        for loaded in documents:
            item = self._prepare(apply_attributes(loaded, run_attributes), collection=collection,
                                 report=report, progress=progress)
            if item is None:
                continue
            pending.append(item)
            if sum(len(p.chunks) for p in pending) >= self.batch_chunks:
                self._flush(pending, collection, report, progress)
                pending = []
        self._flush(pending, collection, report, progress)
        report.seconds += time.perf_counter() - started
        return report

    def _prepare(self, document: Document, *, collection: str, report: IngestReport,
                 progress: Progress | None) -> _Pending | None:
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
        return _Pending(document, stored is None, chunks)

    def _load(self, files: Sequence[SourceFile], report: IngestReport) -> Iterator[Document]:
        for file in files:
            try:
                yield load_file(file.path, source=file.source,
                                max_bytes=int(self.chunking.max_file_mb * 1e6),
                                fingerprint=self.fingerprint)
            except LoaderError as e:
                report.failed.append((file.source, str(e)))
                log.warning("skipped %s: %s", file.source, e)

    def _flush(self, pending: list[_Pending], collection: str, report: IngestReport,
               progress: Progress | None) -> None:
        texts = [embedding_text(c, title=p.document.title) for p in pending for c in p.chunks]
        vectors = self.embedder.embed_documents(texts)
        offset = 0
        for p in pending:
            part = vectors[offset:offset + len(p.chunks)]
            offset += len(p.chunks)
            try:
                self.store.write_document(collection=collection, document=p.document,
                                          chunks=p.chunks, embeddings=part)
            except RagError as e:
                report.failed.append((p.document.source, str(e)))
                continue
            (report.added if p.new else report.updated).append(p.document.source)
            report.chunks_written += len(p.chunks)
            if progress:
                progress(p.document.source, report.chunks_written)

    def _remove_missing(self, collection: str, present: set[str], report: IngestReport) -> None:
        for source in self.store.list_sources(collection=collection):
            if source not in present and self.store.delete_document(collection=collection,
                                                                     source=source):
                report.removed.append(source)


@dataclass(frozen=True)
class _Pending:
    document: Document
    new: bool
    chunks: list[Chunk]
