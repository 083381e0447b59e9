"""The backend roles as structural protocols. Implementations do not inherit."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.types import Chunk, CollectionStats, Document, ScoredChunk


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
    """Documents and their chunks, searchable by vector.

    Every write of one document is atomic: readers see the old chunks or the
    new ones, never a mix.
    """

    def ensure_collection(self, name: str, *, embed_model: str, embed_dim: int) -> None:
        """Create the collection if missing.

        Raises:
            ConfigError: it exists with another embedding model or dimension.
        """
        ...

    def document_hash(self, *, collection: str, source: str) -> str | None:
        """The stored content hash of a document, or None if absent."""
        ...

    def write_document(
        self, *, collection: str, document: Document, chunks: Sequence[Chunk], embeddings: np.ndarray
    ) -> str:
        """Replace a document and all its chunks in one transaction; returns its id."""
        ...

    def delete_document(self, *, collection: str, source: str) -> bool:
        """Delete a document and its chunks; returns whether it existed."""
        ...

    def list_sources(self, *, collection: str) -> list[str]:
        ...

    def search_dense(
        self, *, collection: str, query: np.ndarray, top_k: int
    ) -> list[ScoredChunk]:
        """The ``top_k`` chunks by cosine similarity, best first.

        Raises:
            NotFoundError: the collection does not exist.
        """
        ...

    def stats(self) -> list[CollectionStats]:
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
