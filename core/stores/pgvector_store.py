"""Documents and chunks in PostgreSQL with pgvector.

Each chunk keeps its float embedding as ``halfvec`` (for exact search and
rescoring) and its sign bits as ``bit`` codes (for Hamming-distance candidate
search through a per-collection HNSW index).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import psycopg
from pgvector import Bit, HalfVector

from core.errors import ConfigError, ConflictError, NotFoundError, StoreError
from core.lexical import BM25_B, BM25_K1, term_frequencies
from core.quantize import quantize_binary
from core.stores import pgvector_sql as q
from core.stores.database import Database
from core.stores.filters import compile_filter
from core.types import (
    Chunk,
    CollectionStats,
    Document,
    DocumentInfo,
    ScoredChunk,
    SearchFilter,
    document_id,
)


class PgvectorStore:
    """The ``Store`` protocol over a :class:`Database`, scoped to one tenant.

    Example:
        >>> store = PgvectorStore(db)
        >>> store.ensure_collection("docs", embed_model="all-MiniLM-L6-v2", embed_dim=384)
        >>> store.search_dense(collection="docs", query=vector, top_k=5)
    """

    def __init__(self, db: Database, *, tenant: str = "default") -> None:
        self._db = db
        self.tenant = tenant

    def ensure_collection(self, name: str, *, embed_model: str, embed_dim: int) -> None:
        with self._db.pool.connection() as conn:
            conn.execute(
                q.UPSERT_COLLECTION,
                {"tenant": self.tenant, "name": name, "embed_model": embed_model,
                 "embed_dim": embed_dim},
            )
            cid, model, dim = self._collection(conn, name)
            if (model, dim) != (embed_model, embed_dim):
                raise ConfigError(
                    f"collection {name!r} holds embeddings of {model} ({dim}-d), not "
                    f"{embed_model} ({embed_dim}-d): use the same embedder, or ingest "
                    "into a new collection"
                )
            conn.execute(q.create_binary_index(collection_id=cid, dim=dim))

    def collection_model(self, name: str) -> tuple[str, int]:
        """The embedding model and dimension a collection was built with.

        Raises:
            NotFoundError: no such collection.
        """
        with self._db.pool.connection() as conn:
            _, model, dim = self._collection(conn, name)
        return model, dim

    def document_hash(self, *, collection: str, source: str) -> str | None:
        with self._db.pool.connection() as conn:
            row = conn.execute(
                q.GET_DOCUMENT_HASH,
                {"tenant": self.tenant, "collection": collection, "source": source},
            ).fetchone()
        return None if row is None else str(row[0])

    def document_hashes(self, *, collection: str) -> dict[str, str]:
        """Every stored document's content hash by source (empty for an unknown collection)."""
        with self._db.pool.connection() as conn:
            rows = conn.execute(
                q.LIST_DOCUMENT_HASHES, {"tenant": self.tenant, "collection": collection}
            ).fetchall()
        return {str(source): str(digest) for source, digest in rows}

    def write_document(
        self,
        *,
        collection: str,
        document: Document,
        chunks: Sequence[Chunk],
        embeddings: np.ndarray,
    ) -> str:
        if len(chunks) != len(embeddings):
            raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
        doc_id = document_id(collection=self._key(collection), source=document.source)
        bits = quantize_binary(embeddings)
        try:
            with self._db.pool.connection() as conn, conn.transaction():
                cid, _, dim = self._collection(conn, collection)
                if len(embeddings) and embeddings.shape[1] != dim:
                    raise ConfigError(
                        f"embeddings are {embeddings.shape[1]}-d; collection {collection!r} "
                        f"is {dim}-d"
                    )
                conn.execute(q.UPSERT_DOCUMENT, {
                    "id": doc_id, "collection_id": cid, "source": document.source,
                    "title": document.title, "content_hash": document.content_hash,
                    "metadata": json.dumps(document.metadata),
                    "acl_groups": list(document.acl_groups), "chunk_count": len(chunks),
                })
                conn.execute(q.DELETE_CHUNKS_OF_DOCUMENT, {"id": doc_id})
                terms = [term_frequencies(lexical_text(c, title=document.title)) for c in chunks]
                with conn.cursor() as cur, cur.copy(q.COPY_CHUNKS) as copy:
                    copy.set_types(q.COPY_CHUNK_TYPES)
                    for chunk, tf, vector, code in zip(chunks, terms, embeddings, bits, strict=True):
                        copy.write_row((
                            chunk.id, doc_id, cid, chunk.ordinal, chunk.text, chunk.heading,
                            chunk.page, chunk.token_count, sum(tf.values()), HalfVector(vector),
                            Bit(np.unpackbits(code)[:dim].astype(bool)),
                        ))
                with conn.cursor() as cur, cur.copy(q.COPY_TERMS) as copy:
                    copy.set_types(q.COPY_TERM_TYPES)
                    for chunk, tf in zip(chunks, terms, strict=True):
                        for term, count in tf.items():
                            copy.write_row((chunk.id, cid, term, count))
        except psycopg.Error as e:
            raise StoreError(f"could not write {document.source}: {_first_line(e)}") from e
        return doc_id

    def delete_document(self, *, collection: str, source: str) -> bool:
        with self._db.pool.connection() as conn:
            cur = conn.execute(
                q.DELETE_DOCUMENT,
                {"tenant": self.tenant, "collection": collection, "source": source},
            )
            return cur.rowcount > 0

    def list_sources(self, *, collection: str) -> list[str]:
        with self._db.pool.connection() as conn:
            rows = conn.execute(
                q.LIST_SOURCES, {"tenant": self.tenant, "collection": collection}
            ).fetchall()
        return [str(r[0]) for r in rows]

    def search_dense(
        self, *, collection: str, query: np.ndarray, top_k: int, mode: str = "float",
        oversample: int = 10, where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """Nearest visible chunks by cosine similarity, best first.

        ``mode`` is ``float`` (exact search over the ``halfvec`` vectors), ``binary``
        (Hamming distance over the bit codes through the HNSW index, scored by the
        cosine that distance implies, no rescoring) or ``binary-rescore`` (the ``top_k x
        oversample`` nearest codes, rescored with their ``halfvec`` vectors).

        Raises:
            NotFoundError: no such collection.
            ConfigError: the query has another dimension than the collection.
            ValueError: an unknown mode.
        """
        visible, filter_params = compile_filter(where)
        with self._db.pool.connection() as conn:
            cid, _, dim = self._collection(conn, collection)
            if query.shape[-1] != dim:
                raise ConfigError(
                    f"query embedding is {query.shape[-1]}-d; collection {collection!r} is "
                    f"{dim}-d: query with the model the collection was built with"
                )
            params: dict[str, Any] = {"query": HalfVector(query), "top_k": top_k,
                                      "collection_id": cid, **filter_params}
            if mode == "float":
                rows = conn.execute(q.search_float(visible=visible), params).fetchall()
            elif mode == "binary":
                params["query_bits"] = Bit(query > 0)
                conn.execute(q.set_ef_search(max(40, top_k)))
                rows = conn.execute(q.search_binary(collection_id=cid, dim=dim, visible=visible),
                                    params).fetchall()
            elif mode == "binary-rescore":
                # pgvector caps hnsw.ef_search at 1000; more candidates than that cannot be
                # returned by one index scan, so the candidate list is capped with it.
                candidates = min(max(top_k * oversample, top_k), q.MAX_EF_SEARCH)
                params["query_bits"] = Bit(query > 0)
                params["candidates"] = candidates
                conn.execute(q.set_ef_search(max(40, candidates)))
                rows = conn.execute(
                    q.search_binary_rescore(collection_id=cid, dim=dim, visible=visible), params
                ).fetchall()
            else:
                raise ValueError(f"unknown dense mode {mode!r}; use 'float', 'binary' or "
                                 "'binary-rescore'")
        return [_scored(row, stage=f"dense_{mode}") for row in rows]

    def search_lexical(
        self, *, collection: str, query: str, top_k: int, k1: float = BM25_K1, b: float = BM25_B,
        where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """The ``top_k`` visible chunks by BM25, best first; statistics cover visible chunks only."""
        counts = term_frequencies(query)
        if not counts:
            return []
        terms = sorted(counts)
        visible, filter_params = compile_filter(where)
        with self._db.pool.connection() as conn:
            cid, _, _ = self._collection(conn, collection)
            rows = conn.execute(q.search_bm25(visible=visible), {
                "collection_id": cid, "terms": terms,
                "weights": [float(counts[t]) for t in terms], "k1": k1, "b": b, "top_k": top_k,
                **filter_params,
            }).fetchall()
        return [_scored(row, stage="bm25") for row in rows]

    def fetch_hits(self, *, collection: str, scores: Sequence[tuple[str, float]],
                   stage: str) -> list[ScoredChunk]:
        """Hits for ``(chunk id, score)`` pairs found outside Postgres, in the order given.

        Ids no longer in the collection are skipped. Each hit's score is stored under
        ``scores[stage]``.

        Raises:
            NotFoundError: no such collection.
        """
        with self._db.pool.connection() as conn:
            cid, _, _ = self._collection(conn, collection)
            rows = conn.execute(q.FETCH_HITS, {"collection_id": cid,
                                               "ids": [c for c, _ in scores]}).fetchall()
        found = {row[0]: row for row in rows}
        return [_scored((*found[c][:9], s), stage=stage) for c, s in scores if c in found]

    def index_bytes(self, collection: str) -> dict[str, int]:
        """Bytes the collection's search structures take in Postgres, by part.

        ``halfvec`` (float vectors), ``bit_codes``, ``bit_hnsw`` (the binary HNSW
        index), ``bm25_postings`` and ``bm25_index`` (the postings' lookup index,
        prorated by the collection's share), and ``chunks``, the row count.

        Raises:
            NotFoundError: no such collection.
        """
        with self._db.pool.connection() as conn:
            cid, _, _ = self._collection(conn, collection)
            row = conn.execute(q.INDEX_BYTES, {"collection_id": cid,
                                               "binary_index": q.binary_index_name(cid)}).fetchone()
        assert row is not None  # aggregates always return a row
        keys = ("halfvec", "bit_codes", "chunks", "bm25_postings", "bm25_index", "bit_hnsw")
        return {k: int(v) for k, v in zip(keys, row, strict=True)}

    def widen(self, hits: Sequence[ScoredChunk], *, window: int) -> list[ScoredChunk]:
        """Hits whose text includes ``window`` neighbouring chunks on each side (small-to-big).

        Neighbours come from the same document, so they carry the same ACL.
        """
        if window <= 0 or not hits:
            return list(hits)
        with self._db.pool.connection() as conn:
            rows = conn.execute(q.WIDEN, {"ids": [h.chunk.id for h in hits], "window": window})
            wide = dict(rows.fetchall())
        return [replace(h, chunk=replace(h.chunk, text=wide.get(h.chunk.id, h.chunk.text)))
                for h in hits]

    def sample_chunks(self, *, collection: str, limit: int, seed: str = "") -> list[ScoredChunk]:
        """Up to ``limit`` chunks in a pseudo-random order fixed by ``seed`` (scores are 0).

        Raises:
            NotFoundError: the collection does not exist.
        """
        with self._db.pool.connection() as conn:
            cid, _, _ = self._collection(conn, collection)
            rows = conn.execute(q.SAMPLE_CHUNKS, {"collection_id": cid, "seed": seed,
                                                  "limit": limit}).fetchall()
        return [_scored(row, stage="sample") for row in rows]

    def stats(self, *, where: SearchFilter | None = None) -> list[CollectionStats]:
        """The tenant's collections, counting only the documents and chunks ``where`` allows."""
        visible, params = compile_filter(where)
        with self._db.pool.connection() as conn:
            rows = conn.execute(q.stats(visible=visible), {"tenant": self.tenant, **params}).fetchall()
        return [
            CollectionStats(name=r[0], embed_model=r[1], embed_dim=r[2], documents=int(r[3]),
                            chunks=int(r[4]))
            for r in rows
        ]

    def create_collection(self, name: str, *, embed_model: str, embed_dim: int) -> None:
        """Create an empty collection for this embedding model.

        Raises:
            ConflictError: the tenant already has a collection of that name.
        """
        with self._db.pool.connection() as conn, conn.transaction():
            row = conn.execute(q.CREATE_COLLECTION, {"tenant": self.tenant, "name": name,
                                                     "embed_model": embed_model,
                                                     "embed_dim": embed_dim}).fetchone()
            if row is None:
                raise ConflictError(f"collection {name!r} already exists")
            conn.execute(q.create_binary_index(collection_id=int(row[0]), dim=embed_dim))

    def delete_collection(self, name: str) -> None:
        """Delete a collection with all its documents and chunks.

        Raises:
            NotFoundError: the tenant has no collection of that name.
        """
        with self._db.pool.connection() as conn, conn.transaction():
            row = conn.execute(q.DELETE_COLLECTION, {"tenant": self.tenant, "name": name}).fetchone()
            if row is None:
                raise NotFoundError(f"collection {name!r} does not exist")
            conn.execute(q.drop_binary_index(collection_id=int(row[0])))

    def list_documents(self, *, collection: str, where: SearchFilter | None = None,
                       limit: int = 50, offset: int = 0) -> tuple[list[DocumentInfo], int]:
        """One page of the documents ``where`` allows, by source, and how many there are in all.

        Raises:
            NotFoundError: the tenant has no such collection.
        """
        visible, params = compile_filter(where)
        with self._db.pool.connection() as conn:
            cid, _, _ = self._collection(conn, collection)
            params |= {"collection_id": cid, "limit": limit, "offset": offset}
            rows = conn.execute(q.list_documents(visible=visible), params).fetchall()
            total = conn.execute(q.count_documents(visible=visible), params).fetchone()
        return [_document_info(r) for r in rows], int(total[0]) if total else 0

    def get_document(self, doc_id: str, *, where: SearchFilter | None = None) -> DocumentInfo:
        """A document of this tenant that ``where`` allows.

        Raises:
            NotFoundError: no such document, or the caller may not see it.
        """
        visible, params = compile_filter(where)
        with self._db.pool.connection() as conn:
            row = conn.execute(q.get_document(visible=visible),
                               {"id": doc_id, "tenant": self.tenant, **params}).fetchone()
        if row is None:
            raise NotFoundError("no such document; list documents with GET /v1/documents")
        return _document_info(row)

    def delete_document_by_id(self, doc_id: str) -> bool:
        """Delete a document of this tenant and its chunks; returns whether it existed."""
        with self._db.pool.connection() as conn:
            cur = conn.execute(q.DELETE_DOCUMENT_BY_ID, {"id": doc_id, "tenant": self.tenant})
            return cur.rowcount > 0

    def _key(self, collection: str) -> str:
        return f"{self.tenant}/{collection}"

    def _collection(self, conn: psycopg.Connection[Any], name: str) -> tuple[int, str, int]:
        row = conn.execute(q.GET_COLLECTION, {"tenant": self.tenant, "name": name}).fetchone()
        if row is None:
            raise NotFoundError(
                f"collection {name!r} does not exist; ingest documents into it first"
            )
        return int(row[0]), str(row[1]), int(row[2])


def _scored(row: tuple[Any, ...], *, stage: str) -> ScoredChunk:
    chunk = Chunk(id=row[0], document_id=row[1], ordinal=row[2], text=row[3], heading=row[4],
                  page=row[5], token_count=row[6])
    score = float(row[9])
    return ScoredChunk(chunk=chunk, score=score, source=row[7], title=row[8],
                       scores={stage: score})


def lexical_text(chunk: Chunk, *, title: str) -> str:
    """What BM25 indexes for a chunk: the document title, the heading path and the text."""
    return f"{title}\n{chunk.heading}\n{chunk.text}"


def _document_info(row: tuple[Any, ...]) -> DocumentInfo:
    return DocumentInfo(id=row[0], collection=row[1], source=row[2], title=row[3],
                        chunk_count=int(row[4]), acl_groups=tuple(row[5]), metadata=dict(row[6]),
                        ingested_at=row[7])


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
