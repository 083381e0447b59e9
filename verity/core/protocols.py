"""The backend roles as structural protocols. Implementations do not inherit."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from verity.core.errors import RagError
from verity.core.lexical import BM25_B, BM25_K1
from verity.core.types import (
    Chunk,
    CollectionStats,
    DenseMode,
    Document,
    DocumentInfo,
    ScoredChunk,
    SearchFilter,
)


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """One document for :meth:`Store.write_documents`: its chunks and their embeddings, row by row."""

    document: Document
    chunks: Sequence[Chunk]
    embeddings: np.ndarray


class Embedder(Protocol):
    """Turns text into unit-length float32 vectors."""

    name: str

    @property
    def dim(self) -> int:
        """Embedding dimension. Loads the model if needed."""
        ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages; returns shape ``(len(texts), dim)``, L2-normalised.

        Raises:
            EmbedderError: the model could not be loaded or run.
        """
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one question; returns shape ``(dim,)``, L2-normalised."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens the model's own tokenizer produces for ``text``."""
        ...


class Store(Protocol):
    """Documents and their chunks in named collections of one tenant, searchable by vector and BM25.

    Every call is scoped to :attr:`tenant`: another tenant's collections are invisible,
    as if they did not exist. A collection remembers the embedding model and dimension it
    was built with. Every write of one document is atomic: readers see the old chunks or
    the new ones, never a mix. Searches that take ``where`` apply it inside the store, so
    a chunk the filter hides is never returned, counted or ranked against (a caller given
    ``SearchFilter(groups=...)`` never sees a chunk of a document whose groups it lacks).

    Raises:
        StoreError: on any call, the database behind the store failed or is unreachable.
    """

    @property
    def tenant(self) -> str:
        """The tenant every call is scoped to."""
        ...

    def ensure_collection(self, name: str, *, embed_model: str, embed_dim: int,
                          embed_backend: str = "torch", embed_precision: str = "float32") -> None:
        """Create the collection if missing, recording what makes its vectors.

        Calling it again with the same model does nothing but record the backend and
        precision of the vectors about to be written.

        Raises:
            ConfigError: it exists with another embedding model or dimension, or with
                vectors of a precision that cannot be compared with ``embed_precision``.
        """
        ...

    def check_vectors(self, name: str, *, backend: str, precision: str,
                      writing: bool = False) -> None:
        """Refuse an embedder whose vectors cannot be compared with the collection's: as a
        query embedder, or with ``writing`` as one whose document vectors are about to be
        written (while a re-embed runs, only the target's may be).

        Raises:
            NotFoundError: the tenant has no collection of that name.
            ConfigError: the collection's vectors were made in an incompatible precision.
        """
        ...

    def create_collection(self, name: str, *, embed_model: str, embed_dim: int,
                          embed_backend: str = "torch", embed_precision: str = "float32") -> None:
        """Create an empty collection for this embedding model, backend and precision.

        Raises:
            ConflictError: the tenant already has a collection of that name.
        """
        ...

    def delete_collection(self, name: str) -> None:
        """Delete a collection with all its documents and chunks.

        Raises:
            NotFoundError: the tenant has no collection of that name.
        """
        ...

    def collection_model(self, name: str) -> tuple[str, int]:
        """The embedding model and dimension a collection was built with.

        Raises:
            NotFoundError: no such collection.
        """
        ...

    def stats(self, *, where: SearchFilter | None = None) -> list[CollectionStats]:
        """The tenant's collections by name, counting only the documents and chunks ``where`` allows."""
        ...

    def write_document(
        self, *, collection: str, document: Document, chunks: Sequence[Chunk], embeddings: np.ndarray,
        vectors: tuple[str, str] | None = None,
    ) -> str:
        """Replace a document and all its chunks in one transaction; returns its id.

        The id is ``document_id(collection=f"{tenant}/{collection}", source=document.source)``,
        so writing the same source again replaces it, and writing the same content again
        leaves the same rows. With ``vectors`` (the backend and precision that made the
        embeddings), they are checked as :meth:`check_vectors` with ``writing`` does, in the
        write's own transaction: a re-embed that starts meanwhile either re-embeds what
        this write commits or makes it fail.

        Raises:
            ValueError: ``chunks`` and ``embeddings`` differ in length.
            NotFoundError: the collection does not exist (create it first).
            ConfigError: the embeddings have another dimension than the collection, or
                ``vectors`` may not be written into it.
            StoreError: the write failed; nothing of it is visible.
        """
        ...

    def write_documents(self, *, collection: str, documents: Sequence[DocumentWrite],
                        vectors: tuple[str, str] | None = None) -> list[str | RagError]:
        """Write many documents, each as :meth:`write_document` would; faster than one call each.

        Returns, for each document in order, its id or the error that kept it out
        (``ConfigError`` for chunks and embeddings that differ in length or dimension,
        ``StoreError`` for a document the database refused). Each document stays atomic:
        all its new chunks are visible or none, and one that fails keeps its old version
        and does not keep the others out. Writing the same documents again gives the
        same rows; a source given twice ends as its last version.

        Raises:
            NotFoundError: the collection does not exist (create it first).
        """
        ...

    def bulk_load(self, collection: str) -> AbstractContextManager[None]:
        """A block of many writes into ``collection``; index work may be deferred to its end.

        A store may build a collection's vector index once after the block when the
        block began on an empty collection, rather than update it row by row. Searches
        during the block stay correct (they may be slower); after it, the index is there
        even if a write in it failed.
        """
        ...

    def document_hash(self, *, collection: str, source: str) -> str | None:
        """The stored content hash of a document, or None if absent (or the collection is)."""
        ...

    def document_hashes(self, *, collection: str) -> dict[str, str]:
        """Every stored document's content hash by source (empty for an unknown collection)."""
        ...

    def delete_document(self, *, collection: str, source: str) -> bool:
        """Delete a document and its chunks; returns whether it existed."""
        ...

    def list_sources(self, *, collection: str) -> list[str]:
        """The sources of the collection's documents, sorted (empty for an unknown collection)."""
        ...

    def list_documents(self, *, collection: str, where: SearchFilter | None = None,
                       limit: int = 50, offset: int = 0) -> tuple[list[DocumentInfo], int]:
        """One page of the documents ``where`` allows, by source, and how many there are in all.

        Raises:
            NotFoundError: no such collection.
        """
        ...

    def get_document(self, doc_id: str, *, where: SearchFilter | None = None) -> DocumentInfo:
        """A document of the tenant that ``where`` allows.

        Raises:
            NotFoundError: no such document, or ``where`` hides it.
        """
        ...

    def chunk_context(self, chunk_id: str, *, window: int, where: SearchFilter | None = None
                      ) -> tuple[DocumentInfo, list[Chunk]]:
        """A chunk's document and the chunk with ``window`` neighbours on each side, in order.

        Raises:
            NotFoundError: no such chunk in the tenant, or ``where`` hides its document.
        """
        ...

    def list_chunks(self, doc_id: str, *, where: SearchFilter | None = None, limit: int = 50,
                    offset: int = 0) -> tuple[DocumentInfo, list[Chunk]]:
        """A document of the tenant that ``where`` allows and one page of its chunks, in
        reading order (``offset`` chunks skipped, at most ``limit`` returned).

        Raises:
            NotFoundError: no such document, or ``where`` hides it.
        """
        ...

    def delete_document_by_id(self, doc_id: str) -> bool:
        """Delete a document of the tenant and its chunks; returns whether it existed."""
        ...

    def search_dense(
        self, *, collection: str, query: np.ndarray, top_k: int, mode: DenseMode = "float",
        oversample: int = 10, where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """The ``top_k`` visible chunks nearest ``query``, best first.

        ``mode`` says how vectors are compared (see :data:`DenseMode`); ``binary-rescore``
        rescores ``top_k x oversample`` binary candidates. Each hit's score is the cosine
        similarity (implied by the Hamming distance for ``binary``), also stored under
        ``scores["dense_" + mode]`` (e.g. ``dense_float``).

        Raises:
            NotFoundError: the collection does not exist.
            ConfigError: the query has another dimension than the collection.
            ValueError: an unknown mode, or a malformed condition in ``where``.
        """
        ...

    def search_lexical(
        self, *, collection: str, query: str, top_k: int, k1: float = BM25_K1, b: float = BM25_B,
        where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """The ``top_k`` visible chunks by BM25 (``scores["bm25"]``), best first.

        The statistics (chunk count, average length, document frequencies) cover the
        visible chunks only. A query with no indexable terms finds nothing.

        Raises:
            NotFoundError: the collection does not exist.
            ValueError: a malformed condition in ``where``.
        """
        ...

    def fetch_hits(self, *, collection: str, scores: Sequence[tuple[str, float]],
                   stage: str) -> list[ScoredChunk]:
        """Hits for ``(chunk id, score)`` pairs found outside the store, in the order given.

        Ids no longer in the collection are skipped. Each hit's score is stored under
        ``scores[stage]``. No filter applies: the caller found the ids itself.

        Raises:
            NotFoundError: the collection does not exist.
        """
        ...

    def widen(self, hits: Sequence[ScoredChunk], *, window: int) -> list[ScoredChunk]:
        """The hits, in order, with ``window`` neighbouring chunks on each side joined to their text.

        Neighbours come from the same document, so they carry the same ACL; scores are
        kept. A ``window`` of 0 or less returns the hits unchanged.
        """
        ...

    def sample_chunks(self, *, collection: str, limit: int, seed: str = "") -> list[ScoredChunk]:
        """Up to ``limit`` chunks in a pseudo-random order fixed by ``seed`` (scores are 0).

        Raises:
            NotFoundError: the collection does not exist.
        """
        ...

    def index_bytes(self, collection: str) -> dict[str, int]:
        """Bytes the collection's search structures take, by part.

        ``halfvec`` (the float vectors), ``bit_codes`` (the binary codes), ``bit_hnsw``
        (the binary index), ``bm25_postings`` and ``bm25_index`` (the postings' lookup
        index), and ``chunks``, the row count.

        Raises:
            NotFoundError: the collection does not exist.
        """
        ...


class Reranker(Protocol):
    """Re-scores retrieved chunks against the question, jointly rather than one side at a time."""

    name: str

    def warm_up(self) -> None:
        """Load the model now, so the first question does not wait.

        Raises:
            ConfigError: the model is missing or cannot be loaded.
            RerankError: the server that names the model cannot be reached.
        """
        ...

    def rerank(self, query: str, hits: Sequence[ScoredChunk], *, top_k: int) -> list[ScoredChunk]:
        """The ``top_k`` best of ``hits`` for ``query``, best first.

        Each returned hit keeps its earlier per-stage ``scores``, gains
        ``scores["rerank"]`` and takes that as its ``score``. Blocking: async
        callers run it in a thread pool.

        Raises:
            ConfigError: as for ``warm_up``, when the model loads on first use.
            RerankError: the model could not be run, or the server failed, timed
                out or answered something unreadable; callers may fall back to
                the order they had.
        """
        ...


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""


class Generator(Protocol):
    """An OpenAI-compatible chat model."""

    @property
    def model(self) -> str:
        ...

    def generate(self, messages: Sequence[dict[str, str]], *, max_tokens: int | None = None) -> Generation:
        """One complete answer.

        Raises:
            GenerationError: the server is unreachable, failed or timed out.
        """
        ...

    def stream(self, messages: Sequence[dict[str, str]], *, max_tokens: int | None = None) -> Iterator[str]:
        """Text deltas as the model produces them.

        Raises:
            GenerationError: as for ``generate``; also mid-stream.
        """
        ...

    def health(self) -> bool:
        """Whether the server answers now (quickly; never raises)."""
        ...


class TokenCounter(Protocol):
    """Counts tokens as the generator's tokenizer would, to pack sources into its window."""

    name: str
    """Which tokenizer gave the last count (reported in the answer's trace)."""

    def count(self, text: str) -> int:
        """The number of tokens in ``text``; never raises (estimates when it must)."""
        ...
