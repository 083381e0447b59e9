"""Deterministic stand-ins for what tests do not run.

Remote APIs (real HTTP, fixed answers; serve them with :func:`tests.helpers.serve_app`),
and in-memory implementations of the backend protocols (:class:`MemoryStore`,
:class:`WordEmbedder`, :class:`LastWordReranker`) for tests of the code above them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from verity.backends.stores.pgvector_store import query_compatible, vectors_compatible
from verity.core.errors import ConfigError, ConflictError, NotFoundError, RagError
from verity.core.lexical import BM25_B, BM25_K1
from verity.core.protocols import DocumentWrite
from verity.core.types import (
    Chunk,
    CollectionStats,
    DenseMode,
    Document,
    DocumentInfo,
    MetadataCondition,
    ScoredChunk,
    SearchFilter,
    Section,
    chunk_id,
    document_id,
)


def overlap(query: str, document: str) -> float:
    """How many distinct query words (lower-cased, 3+ letters) the document contains."""
    words = {w.strip(".,?!").lower() for w in query.split() if len(w.strip(".,?!")) >= 3}
    text = document.lower()
    return float(sum(1 for w in words if w in text))


def rerank_app() -> FastAPI:
    """A ``/rerank`` server scoring documents by word overlap with the query.

    ``/v1/rerank`` answers like Cohere and vLLM (``results[].relevance_score``,
    at most ``top_n`` results, best first), ``/tei/rerank`` like Text Embeddings
    Inference (a bare list of ``{index, score}``, from ``texts``); ``/slow/rerank``
    takes two seconds, ``/broken/rerank`` fails with 500 and ``/odd/rerank``
    answers JSON of neither shape. Every request body is kept in ``app.state.requests``.
    """
    app = FastAPI()
    app.state.requests = []

    @app.post("/v1/rerank")
    async def cohere(request: Request) -> dict[str, Any]:
        body = await request.json()
        app.state.requests.append(body)
        scored = sorted(((overlap(body["query"], d), i) for i, d in enumerate(body["documents"])),
                        key=lambda pair: (-pair[0], pair[1]))[:body.get("top_n")]
        return {"id": "fake", "model": body.get("model"),
                "results": [{"index": i, "relevance_score": s, "document": {"text": body["documents"][i]}}
                            for s, i in scored]}

    @app.post("/tei/rerank")
    async def tei(request: Request) -> list[dict[str, Any]]:
        body = await request.json()
        app.state.requests.append(body)
        return [{"index": i, "score": overlap(body["query"], t)} for i, t in enumerate(body["texts"])]

    @app.post("/slow/rerank")
    async def slow(request: Request) -> dict[str, Any]:
        await asyncio.sleep(2.0)
        return {"results": []}

    @app.post("/broken/rerank")
    async def broken(request: Request) -> JSONResponse:
        return JSONResponse({"error": "boom"}, status_code=500)

    @app.post("/odd/rerank")
    async def odd(request: Request) -> dict[str, Any]:
        return {"data": "neither shape"}

    return app


def judge_app() -> FastAPI:
    """An OpenAI-compatible server that gives no log-probabilities for chat, only for completions.

    The completions answer says " yes" (log-probability -0.1, " no" -2.3) when
    the prompt's passage mentions "scurvy", and the reverse otherwise.
    """
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake-judge", "object": "model", "created": 0,
                                            "owned_by": "tests"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "length", "logprobs": None,
                             "message": {"role": "assistant", "content": "Yes"}}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        passage = body["prompt"].split("<passage>")[-1].split("</passage>")[0]
        yes, no = (-0.1, -2.3) if "scurvy" in passage.lower() else (-2.3, -0.1)
        top = {" yes": yes, " no": no}
        return {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "length", "text": " yes",
                             "logprobs": {"tokens": [" yes"], "token_logprobs": [yes],
                                          "text_offset": [0], "top_logprobs": [top]}}]}

    return app


VOCAB = ("cat", "dog", "fish", "bird")


class WordEmbedder:
    """The ``Embedder`` protocol as a bag of the :data:`VOCAB` words, L2-normalised:
    deterministic and easy to reason about."""

    name = "word-counts"

    @property
    def dim(self) -> int:
        """One dimension per word of :data:`VOCAB`."""
        return len(VOCAB)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Each text embedded as :meth:`embed_query` does, one row per text."""
        return np.array([self.embed_query(t) for t in texts], dtype=np.float32).reshape(-1, self.dim)

    def embed_query(self, text: str) -> np.ndarray:
        """How often each word occurs in ``text`` (plus a little of every word), normalised."""
        vector = np.array([text.lower().count(w) for w in VOCAB], dtype=np.float32) + 1e-3
        return vector / np.linalg.norm(vector)

    def count_tokens(self, text: str) -> int:
        """Words separated by white space."""
        return len(text.split())


class LastWordReranker:
    """The ``Reranker`` protocol scoring a passage by how many times it holds the query's last
    word, plus a constant preference for ``favourite``: deterministic, and disagreeing with
    the first stage."""

    name = "last-word"

    def __init__(self, favourite: str) -> None:
        self.favourite = favourite

    def warm_up(self) -> None:
        """Nothing to load."""

    def rerank(self, query: str, hits: Sequence[ScoredChunk], *, top_k: int) -> list[ScoredChunk]:
        """The ``top_k`` best hits, scored ``0, -1, -2, ...`` in their new order."""
        word = query.split()[-1]
        scored = sorted(hits, key=lambda h: -(h.chunk.text.split().count(word)
                                              + 5 * (h.source == self.favourite)))
        return [replace(h, score=float(-i), scores={**h.scores, "rerank": float(-i)})
                for i, h in enumerate(scored[:top_k])]


INDEX_BYTES = {"halfvec": 100, "bit_codes": 7, "bm25_postings": 50, "bm25_index": 20, "bit_hnsw": 30}
"""The sizes :meth:`MemoryStore.index_bytes` reports for every collection (the chunk count is real)."""

_RANGES: dict[str, Callable[[Any, Any], bool]] = {"gt": operator.gt, "gte": operator.ge,
                                                   "lt": operator.lt, "lte": operator.le}


@dataclass
class _Stored:
    """One document as written: how it is listed, its content hash, its chunks and their vectors."""

    info: DocumentInfo
    content_hash: str
    chunks: list[Chunk]
    vectors: np.ndarray


@dataclass
class _Collection:
    """What makes a collection's vectors, and its documents by source in the order written."""

    embed_model: str
    embed_dim: int
    backend: str
    precision: str
    documents: dict[str, _Stored] = field(default_factory=dict)


class MemoryStore:
    """The ``Store`` protocol in memory, for one tenant.

    Dense search is exact cosine similarity in every mode; lexical search stands in for BM25
    by counting how many times a chunk holds the query's (lower-cased) words, and finds no
    chunk that holds none. Ties keep the order the chunks were written in. Every search is
    recorded in :attr:`calls` as ``(mode, top_k, oversample)``, lexical ones as
    ``("bm25", top_k, 0)``. Filters apply as in Postgres, to the document's groups and
    top-level metadata.
    """

    def __init__(self, *, tenant: str = "default") -> None:
        self._tenant = tenant
        self._collections: dict[str, _Collection] = {}
        self.calls: list[tuple[str, int, int]] = []

    @property
    def tenant(self) -> str:
        """The tenant every call is scoped to."""
        return self._tenant

    def ensure_collection(self, name: str, *, embed_model: str, embed_dim: int,
                          embed_backend: str = "torch", embed_precision: str = "float32") -> None:
        """Create the collection if missing, or check it has this model and comparable vectors."""
        if name not in self._collections:
            self.create_collection(name, embed_model=embed_model, embed_dim=embed_dim,
                                   embed_backend=embed_backend, embed_precision=embed_precision)
        found = self._collection(name)
        if (found.embed_model, found.embed_dim) != (embed_model, embed_dim):
            raise ConfigError(f"collection {name!r} holds embeddings of {found.embed_model} "
                              f"({found.embed_dim}-d): use the same embedder, or a new collection")
        self.check_vectors(name, backend=embed_backend, precision=embed_precision)
        found.backend, found.precision = embed_backend, embed_precision

    def check_vectors(self, name: str, *, backend: str, precision: str,
                      writing: bool = False) -> None:
        """Refuse vectors of a precision that cannot be compared with the collection's."""
        found = self._collection(name)
        compatible = vectors_compatible if writing else query_compatible
        if not compatible(found.precision, precision):
            raise ConfigError(f"collection {name!r} holds {found.precision} vectors, not "
                              f"{precision} ones: use a {found.precision} embedder, or a new collection")

    def create_collection(self, name: str, *, embed_model: str, embed_dim: int,
                          embed_backend: str = "torch", embed_precision: str = "float32") -> None:
        """Create an empty collection, refusing a name already taken."""
        if name in self._collections:
            raise ConflictError(f"collection {name!r} already exists")
        self._collections[name] = _Collection(embed_model, embed_dim, embed_backend, embed_precision)

    def delete_collection(self, name: str) -> None:
        """Delete a collection with all its documents."""
        self._collection(name)
        del self._collections[name]

    def collection_model(self, name: str) -> tuple[str, int]:
        """The embedding model and dimension the collection was created with."""
        found = self._collection(name)
        return found.embed_model, found.embed_dim

    def stats(self, *, where: SearchFilter | None = None) -> list[CollectionStats]:
        """The collections by name, counting the documents and chunks ``where`` allows."""
        out = []
        for name in sorted(self._collections):
            found = self._collections[name]
            docs = [d for d in found.documents.values() if _allows(where, d.info)]
            out.append(CollectionStats(name=name, documents=len(docs),
                                       chunks=sum(len(d.chunks) for d in docs),
                                       embed_model=found.embed_model, embed_dim=found.embed_dim))
        return out

    def write_document(
        self, *, collection: str, document: Document, chunks: Sequence[Chunk], embeddings: np.ndarray,
        vectors: tuple[str, str] | None = None,
    ) -> str:
        """Replace the document and its chunks; returns its id."""
        if len(chunks) != len(embeddings):
            raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
        if vectors is not None:
            self.check_vectors(collection, backend=vectors[0], precision=vectors[1], writing=True)
        found = self._collection(collection)
        if len(embeddings) and embeddings.shape[1] != found.embed_dim:
            raise ConfigError(f"embeddings are {embeddings.shape[1]}-d; collection {collection!r} "
                              f"is {found.embed_dim}-d")
        doc_id = document_id(collection=f"{self.tenant}/{collection}", source=document.source)
        info = DocumentInfo(id=doc_id, collection=collection, source=document.source,
                            title=document.title, chunk_count=len(chunks),
                            acl_groups=document.acl_groups, metadata=dict(document.metadata),
                            ingested_at=datetime.now(UTC))
        found.documents[document.source] = _Stored(
            info, document.content_hash, [replace(c, document_id=doc_id) for c in chunks],
            np.asarray(embeddings, dtype=np.float32))
        return doc_id

    def write_documents(self, *, collection: str, documents: Sequence[DocumentWrite],
                        vectors: tuple[str, str] | None = None) -> list[str | RagError]:
        """Write each document as :meth:`write_document` does; its id or its error, in order."""
        self._collection(collection)
        results: list[str | RagError] = []
        for w in documents:
            try:
                if len(w.chunks) != len(w.embeddings):
                    raise ConfigError(f"{len(w.chunks)} chunks but {len(w.embeddings)} embeddings")
                results.append(self.write_document(collection=collection, document=w.document,
                                                   chunks=w.chunks, embeddings=w.embeddings,
                                                   vectors=vectors))
            except RagError as e:
                results.append(e)
        return results

    @contextlib.contextmanager
    def bulk_load(self, collection: str) -> Iterator[None]:
        """Nothing to defer: memory has no index to maintain."""
        yield

    def document_hash(self, *, collection: str, source: str) -> str | None:
        """The stored content hash, or None."""
        stored = self.document_hashes(collection=collection)
        return stored.get(source)

    def document_hashes(self, *, collection: str) -> dict[str, str]:
        """Content hashes by source (empty for an unknown collection)."""
        found = self._collections.get(collection)
        return {} if found is None else {s: d.content_hash for s, d in found.documents.items()}

    def delete_document(self, *, collection: str, source: str) -> bool:
        """Delete a document; returns whether it existed."""
        found = self._collections.get(collection)
        return found is not None and found.documents.pop(source, None) is not None

    def list_sources(self, *, collection: str) -> list[str]:
        """The sources, sorted (empty for an unknown collection)."""
        return sorted(self.document_hashes(collection=collection))

    def list_documents(self, *, collection: str, where: SearchFilter | None = None,
                       limit: int = 50, offset: int = 0) -> tuple[list[DocumentInfo], int]:
        """One page of the documents ``where`` allows, by source, and how many there are."""
        found = self._collection(collection)
        infos = [found.documents[s].info for s in sorted(found.documents)
                 if _allows(where, found.documents[s].info)]
        return infos[offset:offset + limit], len(infos)

    def get_document(self, doc_id: str, *, where: SearchFilter | None = None) -> DocumentInfo:
        """The document of that id, if ``where`` allows it."""
        for found in self._collections.values():
            for stored in found.documents.values():
                if stored.info.id == doc_id and _allows(where, stored.info):
                    return stored.info
        raise NotFoundError("no such document; list documents with GET /v1/documents")

    def chunk_context(self, chunk_id: str, *, window: int, where: SearchFilter | None = None
                      ) -> tuple[DocumentInfo, list[Chunk]]:
        """The chunk's document and the chunk with ``window`` neighbours on each side."""
        for found in self._collections.values():
            for stored in found.documents.values():
                hit = next((c for c in stored.chunks if c.id == chunk_id), None)
                if hit is not None and _allows(where, stored.info):
                    near = [c for c in stored.chunks if abs(c.ordinal - hit.ordinal) <= window]
                    return stored.info, near
        raise NotFoundError("no such chunk; search for it first")

    def list_chunks(self, doc_id: str, *, where: SearchFilter | None = None, limit: int = 50,
                    offset: int = 0) -> tuple[DocumentInfo, list[Chunk]]:
        """The document of that id, if ``where`` allows it, and a page of its chunks."""
        info = self.get_document(doc_id, where=where)
        for found in self._collections.values():
            stored = next((s for s in found.documents.values() if s.info.id == doc_id), None)
            if stored is not None:
                return info, sorted(stored.chunks, key=lambda c: c.ordinal)[offset:offset + limit]
        raise NotFoundError("no such document; list documents with GET /v1/documents")

    def delete_document_by_id(self, doc_id: str) -> bool:
        """Delete the document of that id; returns whether it existed."""
        for found in self._collections.values():
            for source, stored in list(found.documents.items()):
                if stored.info.id == doc_id:
                    del found.documents[source]
                    return True
        return False

    def search_dense(
        self, *, collection: str, query: np.ndarray, top_k: int, mode: DenseMode = "float",
        oversample: int = 10, where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """The ``top_k`` visible chunks by exact cosine similarity, in any mode."""
        self.calls.append((mode, top_k, oversample))
        if mode not in ("float", "binary", "binary-rescore"):
            raise ValueError(f"unknown dense mode {mode!r}; use 'float', 'binary' or 'binary-rescore'")
        found = self._collection(collection)
        if query.shape != (found.embed_dim,):
            raise ConfigError(f"the query is {query.shape[-1]}-d; collection {collection!r} "
                              f"is {found.embed_dim}-d")
        rows = self._rows(collection, where)
        scores = [float(stored.vectors[i] @ query) for stored, i in rows]
        return _ranked(rows, scores, top_k=top_k, stage=f"dense_{mode}")

    def search_lexical(
        self, *, collection: str, query: str, top_k: int, k1: float = BM25_K1, b: float = BM25_B,
        where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """The ``top_k`` visible chunks holding the query's words, by how often they do."""
        self.calls.append(("bm25", top_k, 0))
        words = query.lower().split()
        rows = self._rows(collection, where)
        scores = [float(sum(stored.chunks[i].text.split().count(w) for w in words))
                  for stored, i in rows]
        return [h for h in _ranked(rows, scores, top_k=top_k, stage="bm25") if h.score > 0]

    def fetch_hits(self, *, collection: str, scores: Sequence[tuple[str, float]],
                   stage: str) -> list[ScoredChunk]:
        """Hits for the ids still in the collection, in the order given."""
        rows = {stored.chunks[i].id: (stored, i) for stored, i in self._rows(collection, None)}
        return [_hit(*rows[c], score=s, stage=stage) for c, s in scores if c in rows]

    def widen(self, hits: Sequence[ScoredChunk], *, window: int) -> list[ScoredChunk]:
        """The hits with up to ``window`` neighbours of the same document on each side joined in."""
        if window <= 0:
            return list(hits)
        chunks = {c.id: stored.chunks for found in self._collections.values()
                  for stored in found.documents.values() for c in stored.chunks}
        out = []
        for hit in hits:
            near = [c.text for c in chunks.get(hit.chunk.id, [hit.chunk])
                    if abs(c.ordinal - hit.chunk.ordinal) <= window]
            out.append(replace(hit, chunk=replace(hit.chunk, text="\n".join(near))))
        return out

    def sample_chunks(self, *, collection: str, limit: int, seed: str = "") -> list[ScoredChunk]:
        """Up to ``limit`` chunks in an order fixed by ``seed`` and their ids."""
        rows = sorted(self._rows(collection, None), key=lambda row: hashlib.sha256(
            f"{seed}\x00{row[0].chunks[row[1]].id}".encode()).hexdigest())
        return [_hit(stored, i, score=0.0, stage="sample") for stored, i in rows[:limit]]

    def index_bytes(self, collection: str) -> dict[str, int]:
        """:data:`INDEX_BYTES`, and the collection's chunk count under ``chunks``."""
        return {**INDEX_BYTES, "chunks": len(self._rows(collection, None))}

    def _collection(self, name: str) -> _Collection:
        found = self._collections.get(name)
        if found is None:
            raise NotFoundError(f"collection {name!r} does not exist; ingest documents into it first")
        return found

    def _rows(self, collection: str, where: SearchFilter | None) -> list[tuple[_Stored, int]]:
        """Every chunk ``where`` allows, as (its document, its index there), in the order written."""
        return [(stored, i) for stored in self._collection(collection).documents.values()
                if _allows(where, stored.info) for i in range(len(stored.chunks))]


def word_store(chunks: Sequence[tuple[str, str]], *, collection: str = "c") -> MemoryStore:
    """A :class:`MemoryStore` with one collection of ``(source, text)`` chunks embedded by
    :class:`WordEmbedder`; the chunks of one source make one untitled document, in the order given."""
    embedder, store = WordEmbedder(), MemoryStore()
    store.create_collection(collection, embed_model=embedder.name, embed_dim=embedder.dim)
    texts: dict[str, list[str]] = {}
    for source, text in chunks:
        texts.setdefault(source, []).append(text)
    for source, parts in texts.items():
        doc_id = document_id(collection=f"{store.tenant}/{collection}", source=source)
        document = Document(source=source, title="", sections=tuple(Section(t) for t in parts),
                            content_hash=hashlib.sha256("\n".join(parts).encode()).hexdigest())
        store.write_document(collection=collection, document=document,
                             chunks=[Chunk(id=chunk_id(doc_id, i), document_id=doc_id, ordinal=i,
                                           text=t) for i, t in enumerate(parts)],
                             embeddings=embedder.embed_documents(parts))
    return store


def _hit(stored: _Stored, i: int, *, score: float, stage: str) -> ScoredChunk:
    return ScoredChunk(chunk=stored.chunks[i], score=score, source=stored.info.source,
                       title=stored.info.title, scores={stage: score})


def _ranked(rows: Sequence[tuple[_Stored, int]], scores: Sequence[float], *, top_k: int,
            stage: str) -> list[ScoredChunk]:
    order = sorted(range(len(rows)), key=lambda n: (-scores[n], n))[:top_k]
    return [_hit(*rows[n], score=scores[n], stage=stage) for n in order]


def _allows(where: SearchFilter | None, info: DocumentInfo) -> bool:
    """Whether ``where`` lets a caller see the document, as the SQL filter decides."""
    if where is None:
        return True
    if where.groups is not None and info.acl_groups and not set(info.acl_groups) & set(where.groups):
        return False
    return all(_holds(cond, info.metadata) for cond in where.conditions)


def _holds(cond: MetadataCondition, metadata: dict[str, Any]) -> bool:
    value = metadata.get(cond.key)
    if cond.op == "eq":
        return cond.key in metadata and value == cond.value
    if cond.op == "in":
        if not isinstance(cond.value, list | tuple) or not cond.value:
            raise ValueError(f"filter {cond.key!r} 'in' needs a non-empty list")
        return cond.key in metadata and value in cond.value
    if cond.op not in _RANGES:
        raise ValueError(f"unknown filter op {cond.op!r}; use eq, in, gt, gte, lt or lte")
    if isinstance(cond.value, bool) or not isinstance(cond.value, int | float | str):
        raise ValueError(f"filter {cond.key!r} {cond.op!r} needs a number or a string")
    numbers = not isinstance(value, bool | str) and isinstance(value, int | float)
    same_kind = isinstance(value, str) if isinstance(cond.value, str) else numbers
    return same_kind and _RANGES[cond.op](value, cond.value)
