"""Re-embedding a collection in place with this process's embedder.

Every chunk's embedding text is made exactly as ingestion makes it (the heading or
title, then the text), embedded in batches, and written back batch by batch
(:mod:`verity.backends.stores.reembed`); the recorded embedder changes when the last
batch is written, and the bit HNSW index is rebuilt. Nothing is loaded from the
original files, which are not kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ingest.splitter import embedding_text
from verity.backends.embedders import LocalEmbedder
from verity.backends.stores import reembed as store
from verity.backends.stores.database import Database
from verity.core.types import Chunk

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (chunks re-embedded, chunks in the collection) before every batch; it may
raise to stop the re-embed, which then resumes from there when run again."""


@dataclass
class ReembedReport:
    """What a re-embed did."""

    collection: str
    backend: str
    precision: str
    chunks: int = 0
    """Chunks whose vectors this run computed."""
    total: int = 0
    indexes: tuple[str, ...] = ()
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.collection}: {self.chunks} of {self.total} chunks re-embedded into "
                f"{self.precision} vectors ({self.backend}) in {self.seconds:.1f}s")


class Reembedder:
    """Moves a collection's vectors to this embedder, a batch of chunks at a time.

    Example:
        >>> report = Reembedder(db, embedder).run(tenant="default", collection="docs")
        >>> report.summary()
        'docs: 812 of 812 chunks re-embedded into int8 vectors (onnx) in 31.2s'
    """

    def __init__(self, db: Database, embedder: LocalEmbedder, *, batch_chunks: int = 256) -> None:
        self.db = db
        self.embedder = embedder
        self.batch_chunks = batch_chunks

    @property
    def target(self) -> store.Embedding:
        e = self.embedder
        return store.Embedding(model=e.name, dim=e.dim, backend=e.settings.backend,
                               precision=e.precision)

    def run(self, *, tenant: str, collection: str,
            progress: Progress | None = None) -> ReembedReport:
        """Re-embed every chunk of the collection (resuming an unfinished re-embed).

        Raises:
            NotFoundError: no such collection.
            ConfigError: the collection holds another model or dimension.
            ConflictError: another re-embed changed the target meanwhile.
        """
        started = time.perf_counter()
        target = self.target
        plan = store.start_reembed(self.db, tenant=tenant, name=collection, target=target)
        report = ReembedReport(collection=collection, backend=target.backend,
                               precision=target.precision, total=plan.total)
        done, after = plan.done, plan.after
        while True:
            if progress is not None:
                progress(done, max(plan.total, done))
            batch = store.pending_chunks(self.db, collection_id=plan.collection_id, after=after,
                                         limit=self.batch_chunks)
            if not batch:
                break
            texts = [embedding_text(Chunk(id=c.id, document_id="", ordinal=0, text=c.text,
                                          heading=c.heading), title=c.title) for c in batch]
            vectors = self.embedder.embed_documents(texts)
            store.write_vectors(self.db, collection_id=plan.collection_id, target=target,
                                chunks=batch, vectors=vectors)
            done += len(batch)
            report.chunks += len(batch)
            after = batch[-1].id
        indexes, total = store.finish_reembed(self.db, tenant=tenant, name=collection,
                                              collection_id=plan.collection_id, target=target)
        report.indexes, report.total = tuple(indexes), total
        report.seconds = time.perf_counter() - started
        log.info("re-embedded %s", report.summary())
        return report
