"""Rebuilding a collection's vector index, and re-embedding its chunks in place.

A re-embed computes every chunk's vector again with another embedder backend or
precision (the model and its dimension stay), a batch of chunks at a time in id
order, each batch in its own transaction with the collection's cursor
(``reembed_after``). Searches go on throughout: a chunk keeps its old vector until its
batch commits, and while the collection holds vectors of both embedders a query
embedder must be compatible with both (:mod:`verity.backends.stores.collection_vectors`).
A re-embed stopped part way resumes after the cursor when run again with the same
embedder; the vectors it computes depend only on the chunk, so running one twice gives
the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector import HalfVector

from verity.backends.stores import pgvector_sql as q
from verity.backends.stores.collection_vectors import VectorState, read_state, vectors_compatible
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_write import bit_codes
from verity.core.errors import ConfigError, ConflictError

log = logging.getLogger(__name__)

RETRIES = 3
"""Times a batch is written again after a deadlock with a concurrent ingestion."""


@dataclass(frozen=True, slots=True)
class Embedding:
    """Which embedder a re-embed moves a collection's vectors to."""

    model: str
    dim: int
    backend: str
    precision: str


@dataclass(frozen=True, slots=True)
class ReembedPlan:
    """A re-embed started (or resumed): where it starts and how far it has to go."""

    collection_id: int
    after: str | None
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class PendingChunk:
    """A chunk to re-embed, with what its embedding text is made of."""

    id: str
    text: str
    heading: str
    title: str
    content_hash: str


def check_target(state: VectorState, *, name: str, target: Embedding) -> None:
    """Refuse a re-embed that would change the model or the dimension.

    Raises:
        ConfigError: another dimension, or another model of the same dimension.
    """
    if state.dim != target.dim:
        raise ConfigError(
            f"collection {name!r} holds {state.dim}-d vectors of {state.model}, and this "
            f"server embeds {target.dim}-d vectors with {target.model}: re-embedding keeps "
            "the dimension; ingest the documents into a new collection instead")
    if state.model != target.model:
        raise ConfigError(
            f"collection {name!r} holds vectors of {state.model}, and this server embeds with "
            f"{target.model}: re-embedding changes the backend or precision, not the model "
            "(queries of one model cannot search the other's vectors while it runs); ingest "
            "the documents into a new collection instead")


def check_reembed(db: Database, *, tenant: str, name: str, target: Embedding) -> int:
    """Whether the collection can be re-embedded with ``target``; returns its chunk count.

    Raises:
        NotFoundError: no such collection.
        ConfigError: another model or dimension.
    """
    with db.pool.connection() as conn:
        state = read_state(conn, tenant=tenant, name=name)
        check_target(state, name=name, target=target)
        row = conn.execute(q.COUNT_COLLECTION_CHUNKS,
                           {"collection_id": state.collection_id}).fetchone()
    return int(row[0]) if row else 0


def start_reembed(db: Database, *, tenant: str, name: str, target: Embedding) -> ReembedPlan:
    """Record that the collection's vectors are moving to ``target``; resume if they were.

    The same target as an unfinished re-embed resumes after its cursor. Another target
    starts again from the first chunk; if it cannot be compared with the unfinished
    one's, the chunks already moved count as the collection's recorded vectors, so the
    two recorded embedders still describe every vector the collection holds.

    Raises:
        NotFoundError: no such collection.
        ConfigError: another model or dimension.
    """
    with db.pool.connection() as conn, conn.transaction():
        state = read_state(conn, tenant=tenant, name=name, lock="update")
        check_target(state, name=name, target=target)
        backend, precision, after = state.backend, state.precision, None
        if (state.target_backend, state.target_precision) == (target.backend, target.precision):
            after = state.after
        elif state.reembedding and not vectors_compatible(str(state.target_precision),
                                                          target.precision):
            backend, precision = str(state.target_backend), str(state.target_precision)
        conn.execute(q.START_REEMBED, {
            "id": state.collection_id, "backend": backend, "precision": precision,
            "target_backend": target.backend, "target_precision": target.precision,
            "after": after})
        params = {"collection_id": state.collection_id, "after": after}
        total = conn.execute(q.COUNT_COLLECTION_CHUNKS, params).fetchone()
        done = conn.execute(q.COUNT_CHUNKS_UPTO, params).fetchone()
    log.info("re-embedding %s/%s into %s %s vectors, from %s", tenant, name, target.backend,
             target.precision, after or "the first chunk")
    return ReembedPlan(collection_id=state.collection_id, after=after,
                       done=int(done[0]) if done else 0, total=int(total[0]) if total else 0)


def pending_chunks(db: Database, *, collection_id: int, after: str | None,
                   limit: int) -> list[PendingChunk]:
    """The next ``limit`` chunks after ``after``, in id order."""
    with db.pool.connection() as conn:
        rows = conn.execute(q.REEMBED_BATCH, {"collection_id": collection_id, "after": after,
                                              "limit": limit}).fetchall()
    return [PendingChunk(*row) for row in rows]


def write_vectors(db: Database, *, collection_id: int, target: Embedding,
                  chunks: Sequence[PendingChunk], vectors: np.ndarray) -> None:
    """Replace the chunks' vectors and bit codes and move the cursor past them, atomically.

    Raises:
        ConflictError: the collection is no longer being re-embedded to ``target`` (another
            re-embed changed the target, or finished it).
    """
    codes = bit_codes(vectors, dim=target.dim)
    rows = [{"id": c.id, "content_hash": c.content_hash, "embedding": HalfVector(v), "bits": b}
            for c, v, b in zip(chunks, vectors, codes, strict=True)]
    cursor = {"collection_id": collection_id, "after": chunks[-1].id,
              "backend": target.backend, "precision": target.precision}
    for attempt in range(RETRIES + 1):
        try:
            with db.pool.connection() as conn, conn.transaction():
                if conn.execute(q.ADVANCE_REEMBED, cursor).fetchone() is None:
                    raise ConflictError(
                        "the collection is no longer being re-embedded with this embedder "
                        "(another re-embed changed or finished it); this one stopped")
                with conn.cursor() as cur:
                    cur.executemany(q.SET_CHUNK_VECTOR, rows)
                conn.execute(q.RECORD_REEMBEDDED, {"ids": [c.id for c in chunks]})
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == RETRIES:
                raise
            log.info("re-embed batch deadlocked with a concurrent write; writing it again")


def finish_reembed(db: Database, *, tenant: str, name: str, collection_id: int,
                   target: Embedding) -> tuple[list[str], int]:
    """Record ``target`` as the collection's embedder, then rebuild its bit HNSW index.

    Returns:
        As :func:`reindex_collection`.

    Raises:
        ConflictError: the collection is no longer being re-embedded to ``target``.
    """
    with db.pool.connection() as conn, conn.transaction():
        row = conn.execute(q.FINISH_REEMBED, {"collection_id": collection_id,
                                              "backend": target.backend,
                                              "precision": target.precision}).fetchone()
    if row is None:
        raise ConflictError("the collection is no longer being re-embedded with this embedder "
                            "(another re-embed changed or finished it)")
    return reindex_collection(db, tenant=tenant, name=name)


def reindex_collection(db: Database, *, tenant: str, name: str) -> tuple[list[str], int]:
    """Rebuild a collection's vector (HNSW) index from its rows in PostgreSQL, then ANALYZE.

    A graph that has seen many deletes and updates searches worse than one built afresh;
    ``REINDEX CONCURRENTLY`` rebuilds it while searches and writes go on.

    Returns:
        The names of the indexes rebuilt and the chunks they cover.

    Raises:
        NotFoundError: the tenant has no collection of that name.
    """
    with db.pool.connection() as conn:
        collection_id = read_state(conn, tenant=tenant, name=name).collection_id
        conn.commit()  # the lookup's transaction ends before the connection goes back
    # REINDEX CONCURRENTLY cannot run in a transaction block, so on a connection of its own.
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        conn.execute(q.reindex_binary_index(collection_id=collection_id))
        conn.execute("ANALYZE chunks")
        row = conn.execute(q.COUNT_COLLECTION_CHUNKS, {"collection_id": collection_id}).fetchone()
    return [q.binary_index_name(collection_id)], int(row[0]) if row else 0
