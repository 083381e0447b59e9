"""Writing documents, their chunks and BM25 postings into PostgreSQL (for :class:`PgvectorStore`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from pgvector import Bit, HalfVector

from verity.backends.quantize import quantize_binary
from verity.backends.stores import pgvector_sql as q
from verity.backends.stores.document_files import write_files
from verity.core.errors import ConfigError, StoreError
from verity.core.lexical import term_frequencies
from verity.core.protocols import DocumentWrite
from verity.core.types import Chunk


def write_problem(write: DocumentWrite, *, dim: int, collection: str) -> ConfigError | None:
    """Why a document cannot be written into a collection of ``dim``-d vectors, if it cannot."""
    chunks, embeddings = write.chunks, write.embeddings
    if len(chunks) != len(embeddings):
        return ConfigError(f"{write.document.source}: {len(chunks)} chunks but "
                           f"{len(embeddings)} embeddings")
    if len(embeddings) and embeddings.shape[1] != dim:
        return ConfigError(f"embeddings are {embeddings.shape[1]}-d; collection {collection!r} "
                           f"is {dim}-d")
    return None


def write_rows(conn: psycopg.Connection[Any], *, collection_id: int, dim: int,
                writes: Sequence[tuple[str, DocumentWrite]]) -> None:
    """Upsert documents and replace their chunks, postings and kept files, in the caller's
    transaction.

    The upserts lock the documents' rows first, so two writers of one document
    serialise instead of interleaving their chunks.
    """
    if not writes:
        return
    with conn.cursor() as cur:
        cur.executemany(q.UPSERT_DOCUMENT, [{
            "id": doc_id, "collection_id": collection_id, "source": w.document.source,
            "title": w.document.title, "content_hash": w.document.content_hash,
            "metadata": json.dumps(w.document.metadata),
            "acl_groups": list(w.document.acl_groups), "chunk_count": len(w.chunks),
        } for doc_id, w in writes])
        cur.execute(q.DELETE_CHUNKS_OF_DOCUMENTS, {"ids": [doc_id for doc_id, _ in writes]})
        write_files(cur, writes)
        terms = [[term_frequencies(lexical_text(c, title=w.document.title)) for c in w.chunks]
                 for _, w in writes]
        with cur.copy(q.COPY_CHUNKS) as copy:
            copy.set_types(q.COPY_CHUNK_TYPES)
            for (doc_id, w), counts in zip(writes, terms, strict=True):
                codes = bit_codes(w.embeddings, dim=dim)
                for chunk, tf, vector, code in zip(w.chunks, counts, w.embeddings, codes,
                                                   strict=True):
                    copy.write_row((chunk.id, doc_id, collection_id, chunk.ordinal, chunk.text,
                                    chunk.heading, chunk.page, chunk.token_count,
                                    sum(tf.values()), HalfVector(vector), code))
        with cur.copy(q.COPY_POSTINGS) as copy:
            copy.set_types(q.COPY_POSTING_TYPES)
            for (_, w), counts in zip(writes, terms, strict=True):
                for chunk, tf in zip(w.chunks, counts, strict=True):
                    ordered = sorted(tf)
                    copy.write_row((chunk.id, collection_id, ordered, [tf[t] for t in ordered]))


def bit_codes(embeddings: np.ndarray, *, dim: int) -> list[Bit]:
    """The sign-bit codes of ``embeddings`` as pgvector values."""
    if not len(embeddings):
        return []
    packed = quantize_binary(embeddings)
    return [Bit(np.unpackbits(code)[:dim].astype(bool)) for code in packed]


def refused(source: str, e: psycopg.Error) -> StoreError:
    return StoreError(f"could not write {source}: the database refused it "
                      f"({type(e).__name__}); the server log has the details")


def lexical_text(chunk: Chunk, *, title: str) -> str:
    """What BM25 indexes for a chunk: the document title, the heading path and the text."""
    return f"{title}\n{chunk.heading}\n{chunk.text}"
