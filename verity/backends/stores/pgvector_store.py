"""Documents and chunks in PostgreSQL with pgvector.

Each chunk keeps its float embedding as ``halfvec`` (for exact search and
rescoring) and its sign bits as ``bit`` codes (for Hamming-distance candidate
search through a per-collection HNSW index).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from pgvector import Bit, HalfVector

from verity.backends.stores import pgvector_sql as q
from verity.backends.stores.collection_vectors import query_compatible as query_compatible
from verity.backends.stores.collection_vectors import query_refusal, read_state, write_refusal
from verity.backends.stores.collection_vectors import vectors_compatible as vectors_compatible
from verity.backends.stores.database import Database, first_line
from verity.backends.stores.dense_index import MIN_CANDIDATES, DenseIndexes
from verity.backends.stores.filters import compile_filter
from verity.backends.stores.hits import in_order, scored_hit, visible_hits
from verity.backends.stores.outbox import IndexKey, latest_change
from verity.backends.stores.pgvector_write import lexical_text as lexical_text
from verity.backends.stores.pgvector_write import refused, write_problem, write_rows
from verity.core.errors import ConfigError, ConflictError, NotFoundError, RagError
from verity.core.lexical import BM25_B, BM25_K1, analyze, term_frequencies
from verity.core.protocols import DocumentWrite
from verity.core.types import (
    Chunk,
    CollectionStats,
    DenseMode,
    Document,
    DocumentInfo,
    ScoredChunk,
    SearchFilter,
    document_id,
)

if TYPE_CHECKING:
    from verity.backends.stores.tantivy_index import LexicalIndexes

log = logging.getLogger(__name__)


class PgvectorStore:
    """The ``Store`` protocol over a :class:`Database`, scoped to one tenant.

    Example:
        >>> store = PgvectorStore(db)
        >>> store.ensure_collection("docs", embed_model="all-MiniLM-L6-v2", embed_dim=384)
        >>> store.search_dense(collection="docs", query=vector, top_k=5)
    """

    exact_scan_chunks = 20_000
    """binary-rescore scans exactly when at most this many chunks are visible to the query."""

    def __init__(self, db: Database, *, tenant: str = "default",
                 lexical: LexicalIndexes | None = None, dense: DenseIndexes | None = None
                 ) -> None:
        self._db = db
        self.tenant = tenant
        self._lexical = lexical
        self._dense = dense

    def ensure_collection(self, name: str, *, embed_model: str, embed_dim: int,
                          embed_backend: str = "torch", embed_precision: str = "float32") -> None:
        """Create the collection if missing, recording what makes its vectors.

        Raises:
            ConfigError: it exists with another embedding model or dimension, or
                with vectors of an incompatible precision (see :func:`vectors_compatible`).
        """
        made = {"embed_backend": embed_backend, "embed_precision": embed_precision}
        with self._db.pool.connection() as conn:
            conn.execute(
                q.UPSERT_COLLECTION,
                {"tenant": self.tenant, "name": name, "embed_model": embed_model,
                 "embed_dim": embed_dim, **made},
            )
            cid, model, dim = self._collection(conn, name)
            if (model, dim) != (embed_model, embed_dim):
                raise ConfigError(
                    f"collection {name!r} holds embeddings of {model} ({dim}-d), not "
                    f"{embed_model} ({embed_dim}-d): use the same embedder, or ingest "
                    "into a new collection"
                )
            self._check_vectors(conn, name, backend=embed_backend, precision=embed_precision)
            conn.execute(q.SET_COLLECTION_VECTORS, {"id": cid, **made})
            conn.execute(q.create_binary_index(collection_id=cid, dim=dim))

    def check_vectors(self, name: str, *, backend: str, precision: str,
                      writing: bool = False) -> None:
        """Refuse a query embedder (or with ``writing``, a writer) whose vectors cannot be
        compared with the collection's.

        Raises:
            NotFoundError: no such collection.
            ConfigError: the collection's vectors were made in an incompatible precision.
        """
        with self._db.pool.connection() as conn:
            self._check_vectors(conn, name, backend=backend, precision=precision,
                                query=not writing)

    def _check_vectors(self, conn: psycopg.Connection[Any], name: str, *, backend: str,
                       precision: str, query: bool = False) -> None:
        state = read_state(conn, tenant=self.tenant, name=name)
        refusal = query_refusal if query else write_refusal
        problem = refusal(state, name=name, backend=backend, precision=precision)
        if problem is not None:
            raise problem

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
        vectors: tuple[str, str] | None = None,
    ) -> str:
        if len(chunks) != len(embeddings):
            raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
        doc_id = document_id(collection=self._key(collection), source=document.source)
        write = DocumentWrite(document, chunks, embeddings)
        try:
            with self._db.pool.connection() as conn, conn.transaction():
                self._lock_for_writing(conn, collection, vectors)
                cid, _, dim = self._collection(conn, collection)
                problem = write_problem(write, dim=dim, collection=collection)
                if problem is not None:
                    raise problem
                write_rows(conn, collection_id=cid, dim=dim, writes=[(doc_id, write)])
        except psycopg.Error as e:
            log.warning("could not write %s: %s", document.source, first_line(e))
            raise refused(document.source, e) from e
        return doc_id

    def write_documents(self, *, collection: str, documents: Sequence[DocumentWrite],
                        vectors: tuple[str, str] | None = None) -> list[str | RagError]:
        """Write many documents in one transaction, or one by one when that fails.

        One transaction with one ``COPY`` for all chunks and one for all postings is
        all-or-nothing for the batch, so each document in it is atomic too. When the
        database refuses it (a bad row), every document is written again in its own
        transaction, so only those at fault fail. An unreachable database raises
        ``StoreError`` as every call does.

        Raises:
            NotFoundError: no such collection.
        """
        with self._db.pool.connection() as conn:
            cid, _, dim = self._collection(conn, collection)
        results: list[str | RagError] = []
        latest: dict[str, DocumentWrite] = {}  # a source given twice: its last version
        for write in documents:
            doc_id = document_id(collection=self._key(collection), source=write.document.source)
            problem = write_problem(write, dim=dim, collection=collection)
            results.append(doc_id if problem is None else problem)
            if problem is None:
                latest[doc_id] = write
        # In id order, so two batches that share documents lock them in the same order.
        writes = sorted(latest.items(), key=lambda item: item[0])
        try:
            with self._db.pool.connection() as conn, conn.transaction():
                self._lock_for_writing(conn, collection, vectors)
                write_rows(conn, collection_id=cid, dim=dim, writes=writes)
        except ConfigError as e:  # these vectors may not be written into the collection
            return [r if isinstance(r, RagError) else e for r in results]
        except psycopg.Error as e:
            log.info("writing %d documents together failed (%s); writing them one by one",
                     len(writes), first_line(e))
            return [self._write_alone(collection, write, result, vectors)
                    for write, result in zip(documents, results, strict=True)]
        return results

    def _lock_for_writing(self, conn: psycopg.Connection[Any], collection: str,
                          vectors: tuple[str, str] | None) -> None:
        """Lock the collection's row for share and refuse ``vectors`` it may not take."""
        if vectors is None:
            return
        state = read_state(conn, tenant=self.tenant, name=collection, lock="share")
        problem = write_refusal(state, name=collection, backend=vectors[0], precision=vectors[1])
        if problem is not None:
            raise problem

    def _write_alone(self, collection: str, write: DocumentWrite, result: str | RagError,
                     vectors: tuple[str, str] | None) -> str | RagError:
        if isinstance(result, RagError):
            return result
        try:
            return self.write_document(collection=collection, document=write.document,
                                       chunks=write.chunks, embeddings=write.embeddings,
                                       vectors=vectors)
        except RagError as e:
            return e

    @contextlib.contextmanager
    def bulk_load(self, collection: str) -> Iterator[None]:
        """Many writes; into an empty collection, its bit HNSW index is built after them.

        pgvector advises building an HNSW index after loading: inserting row by row
        into the graph took a third of the write time at 5,000 chunks (about 2 ms a
        chunk, growing with the graph). The index is dropped only while the collection has no
        chunks, so no search loses it; searches during the load scan instead. Building
        it (``CREATE INDEX``) holds back other writes to the chunks table meanwhile,
        but not reads. Should the process die mid-load, the next ``ensure_collection``
        builds the index. The tables are analysed after a first load.

        Raises:
            NotFoundError: no such collection.
        """
        with self._db.pool.connection() as conn:
            conn.autocommit = True
            cid, _, dim = self._collection(conn, collection)
            empty = conn.execute(q.COLLECTION_IS_EMPTY, {"collection_id": cid}).fetchone()
            deferred = bool(empty and empty[0])
            if deferred:
                conn.execute(q.drop_binary_index(collection_id=cid))
        try:
            yield
        finally:
            if deferred:
                with self._db.pool.connection() as conn, conn.transaction():
                    conn.execute(q.SET_INDEX_BUILD_MEMORY)
                    conn.execute(q.create_binary_index(collection_id=cid, dim=dim))
                with self._db.pool.connection() as conn:
                    # Fresh statistics, so that the planner's estimate of the visible chunks
                    # (graph walk or exact scan) counts the new collection's rows.
                    conn.execute("ANALYZE chunks, documents")

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
        self, *, collection: str, query: np.ndarray, top_k: int, mode: DenseMode = "float",
        oversample: int = 10, where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """Nearest visible chunks by cosine similarity, best first.

        ``mode`` is ``float`` (exact search over the ``halfvec`` vectors), ``binary``
        (Hamming distance over the bit codes through the HNSW index, scored by the
        cosine that distance implies, no rescoring) or ``binary-rescore`` (the ``top_k x
        oversample`` nearest codes, rescored with their ``halfvec`` vectors). With the
        in-memory dense index, it answers ``binary-rescore`` (:mod:`.dense_index`).
        Otherwise, when at most :attr:`exact_scan_chunks` chunks are visible, it scans those
        exactly: a graph walk for few codes costs about as much, finds fewer of the true
        nearest under a filter and can get stuck among identical codes (a repeated chunk).

        Raises:
            NotFoundError: no such collection.
            ConfigError: the query has another dimension than the collection.
            ValueError: an unknown mode.
        """
        visible, filter_params = compile_filter(where)
        # One transaction, so the HNSW settings (SET LOCAL) hold for the search.
        with self._db.pool.connection() as conn, conn.transaction():
            cid, _, dim = self._collection(conn, collection)
            if query.shape[-1] != dim:
                raise ConfigError(
                    f"query embedding is {query.shape[-1]}-d; collection {collection!r} is "
                    f"{dim}-d: query with the model the collection was built with"
                )
            indexed = None if mode != "binary-rescore" else self._search_dense_indexed(
                conn, collection=collection, cid=cid, query=query, top_k=top_k,
                oversample=oversample, where=where)
            if indexed is not None:
                return indexed
            params: dict[str, Any] = {"query": HalfVector(query), "top_k": top_k,
                                      "collection_id": cid, **filter_params}
            if mode == "float":
                rows = conn.execute(q.search_float(visible=visible), params).fetchall()
            elif mode == "binary":
                params["query_bits"] = Bit(query > 0)
                conn.execute(q.set_ef_search(max(40, top_k)))
                rows = conn.execute(q.search_binary(collection_id=cid, dim=dim, visible=visible),
                                    params).fetchall()
            elif mode == "binary-rescore" and self._few_visible(conn, where, params):
                rows = conn.execute(q.search_float_visible_first(visible=visible),
                                    params).fetchall()
            elif mode == "binary-rescore":
                # pgvector caps hnsw.ef_search at 1000; more candidates than that cannot be
                # returned by one index scan, so the candidate list is capped with it.
                candidates = min(max(top_k * oversample, top_k), q.MAX_EF_SEARCH)
                params["query_bits"] = Bit(query > 0)
                params["candidates"] = candidates
                conn.execute(q.set_ef_search(max(q.MIN_EF_SEARCH_RESCORE, candidates)))
                rows = conn.execute(
                    q.search_binary_rescore(collection_id=cid, dim=dim, visible=visible), params
                ).fetchall()
            else:
                raise ValueError(f"unknown dense mode {mode!r}; use 'float', 'binary' or "
                                 "'binary-rescore'")
        return [scored_hit(row, stage=f"dense_{mode}") for row in rows]

    def _search_dense_indexed(self, conn: psycopg.Connection[Any], *, collection: str, cid: int,
                              query: np.ndarray, top_k: int, oversample: int,
                              where: SearchFilter | None) -> list[ScoredChunk] | None:
        """``binary-rescore`` hits from the in-memory dense index, or ``None`` when PostgreSQL
        must answer (no index, metadata conditions it does not hold, or not built yet)."""
        if self._dense is None or (where is not None and where.conditions):
            return None
        scores = self._dense.search(
            IndexKey(tenant=self.tenant, collection=collection, collection_id=cid),
            query=query, groups=None if where is None else where.groups, top_k=top_k,
            candidates=max(top_k * oversample, MIN_CANDIDATES),
            fresh_after=latest_change(conn, collection_id=cid))
        return None if scores is None else visible_hits(conn, cid=cid, scores=scores, where=where,
                                                        stage="dense_binary-rescore")

    def _few_visible(self, conn: psycopg.Connection[Any], where: SearchFilter | None,
                     params: dict[str, Any]) -> bool:
        """Whether at most :attr:`exact_scan_chunks` chunks are visible under ``where``.

        By the planner's estimate: planning costs a fraction of a millisecond, while
        counting up to the bound cost 20 to 30 ms at 100,000 chunks.
        """
        visible, _ = compile_filter(where)
        row = conn.execute(q.estimate_visible_chunks(visible=visible), params).fetchone()
        return row is not None and float(row[0][0]["Plan"]["Plan Rows"]) <= self.exact_scan_chunks

    def search_lexical(
        self, *, collection: str, query: str, top_k: int, k1: float = BM25_K1, b: float = BM25_B,
        where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """The ``top_k`` visible chunks by BM25, best first.

        With a lexical index (``VERITY_RETRIEVAL__LEXICAL=tantivy``) and no metadata
        conditions, tantivy ranks (k1 1.2, b 0.75, statistics over the whole collection);
        otherwise, and while the index is not ready, PostgreSQL does, with ``k1`` and ``b``
        and statistics over the visible chunks only.
        """
        counts = term_frequencies(query)
        if not counts:
            return []
        indexed = self._search_indexed(collection=collection, query=query, top_k=top_k,
                                       where=where)
        if indexed is not None:
            return indexed
        terms = sorted(counts)
        visible, filter_params = compile_filter(where)
        with self._db.pool.connection() as conn:
            cid, _, _ = self._collection(conn, collection)
            rows = conn.execute(q.search_bm25(visible=visible), {
                "collection_id": cid, "terms": terms,
                "weights": [float(counts[t]) for t in terms], "k1": k1, "b": b, "top_k": top_k,
                **filter_params,
            }).fetchall()
        return [scored_hit(row, stage="bm25") for row in rows]

    def _search_indexed(self, *, collection: str, query: str, top_k: int,
                        where: SearchFilter | None) -> list[ScoredChunk] | None:
        """BM25 hits from the tantivy index, or ``None`` when PostgreSQL must answer."""
        if self._lexical is None or (where is not None and where.conditions):
            return None  # metadata conditions are not in the index
        with self._db.pool.connection() as conn:
            cid, _, _ = self._collection(conn, collection)
            key = IndexKey(tenant=self.tenant, collection=collection, collection_id=cid)
            scores = self._lexical.search(key, terms=analyze(query),
                                          groups=None if where is None else where.groups,
                                          top_k=top_k)
            return None if scores is None else visible_hits(conn, cid=cid, scores=scores,
                                                            where=where, stage="bm25")

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
        return in_order(rows, scores=scores, stage=stage)

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
            wide: dict[str, str] = dict(rows.fetchall())
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
        return [scored_hit(row, stage="sample") for row in rows]

    def stats(self, *, where: SearchFilter | None = None) -> list[CollectionStats]:
        """The tenant's collections, counting only the documents and chunks ``where`` allows."""
        visible, params = compile_filter(where)
        with self._db.pool.connection() as conn:
            rows = conn.execute(q.stats(visible=visible), {"tenant": self.tenant, **params}).fetchall()
        return [
            CollectionStats(name=r[0], embed_model=r[1], embed_dim=r[2], documents=int(r[3]),
                            chunks=int(r[4]), embed_backend=r[5], embed_precision=r[6],
                            reembed_precision=r[7])
            for r in rows
        ]

    def create_collection(self, name: str, *, embed_model: str, embed_dim: int,
                          embed_backend: str = "torch", embed_precision: str = "float32") -> None:
        """Create an empty collection for this embedding model.

        Raises:
            ConflictError: the tenant already has a collection of that name.
        """
        with self._db.pool.connection() as conn, conn.transaction():
            row = conn.execute(q.CREATE_COLLECTION, {"tenant": self.tenant, "name": name,
                                                     "embed_model": embed_model,
                                                     "embed_dim": embed_dim,
                                                     "embed_backend": embed_backend,
                                                     "embed_precision": embed_precision}).fetchone()
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

    def chunk_context(self, chunk_id: str, *, window: int, where: SearchFilter | None = None
                      ) -> tuple[DocumentInfo, list[Chunk]]:
        """A chunk's document and the chunk with ``window`` neighbours on each side, in order.

        ``where`` is checked on the document exactly as :meth:`get_document` does.

        Raises:
            NotFoundError: no such chunk in this tenant, or the caller may not see it.
        """
        with self._db.pool.connection() as conn:
            row = conn.execute(q.CHUNK_DOCUMENT, {"id": chunk_id}).fetchone()
        if row is None:
            raise NotFoundError("no such chunk; chunk ids come from /v1/search or citations")
        document = self.get_document(str(row[0]), where=where)
        with self._db.pool.connection() as conn:
            rows = conn.execute(q.CHUNK_CONTEXT, {"id": chunk_id, "window": window}).fetchall()
        return document, [Chunk(*r) for r in rows]

    def list_chunks(self, doc_id: str, *, where: SearchFilter | None = None, limit: int = 50,
                    offset: int = 0) -> tuple[DocumentInfo, list[Chunk]]:
        """A document ``where`` allows and one page of its chunks, in reading order.

        Raises:
            NotFoundError: no such document in this tenant, or the caller may not see it.
        """
        document = self.get_document(doc_id, where=where)
        with self._db.pool.connection() as conn:
            rows = conn.execute(q.DOCUMENT_CHUNKS, {"id": doc_id, "limit": limit,
                                                    "offset": offset}).fetchall()
        return document, [Chunk(*r) for r in rows]

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


def _document_info(row: tuple[Any, ...]) -> DocumentInfo:
    return DocumentInfo(id=row[0], collection=row[1], source=row[2], title=row[3],
                        chunk_count=int(row[4]), acl_groups=tuple(row[5]), metadata=dict(row[6]),
                        ingested_at=row[7])

