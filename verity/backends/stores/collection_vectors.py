"""Which embedders may write into a collection and query it.

A collection records the embedder its vectors were made with (model, dimension, backend,
precision). While a re-embed runs (:mod:`verity.backends.stores.reembed`) it also records
the embedder the vectors are being moved to, and holds vectors of both: a query embedder
must then be compatible with both, and only the target's vectors may be written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from verity.backends.stores import pgvector_sql as q
from verity.core.errors import ConfigError, NotFoundError


@dataclass(frozen=True, slots=True)
class VectorState:
    """What made a collection's vectors, and what a re-embed in progress moves them to."""

    collection_id: int
    model: str
    dim: int
    backend: str
    precision: str
    target_backend: str | None = None
    target_precision: str | None = None
    after: str | None = None
    """The last chunk id re-embedded to the target (chunks go in id order)."""

    @property
    def reembedding(self) -> bool:
        return self.target_precision is not None


def read_state(conn: psycopg.Connection[Any], *, tenant: str, name: str,
               lock: Literal["update", "share"] | None = None) -> VectorState:
    """The collection's vector state; with ``lock``, its row stays locked (``FOR UPDATE`` or
    ``FOR SHARE``) for the rest of the transaction.

    Raises:
        NotFoundError: no such collection.
    """
    query = {None: q.GET_COLLECTION_VECTORS, "update": q.LOCK_COLLECTION_VECTORS,
             "share": q.SHARE_COLLECTION_VECTORS}[lock]
    row = conn.execute(query, {"tenant": tenant, "name": name}).fetchone()
    if row is None:
        raise NotFoundError(f"collection {name!r} does not exist; ingest documents into it first")
    return VectorState(int(row[0]), str(row[1]), int(row[2]), str(row[3]), str(row[4]),
                       row[5], row[6], row[7])


def vectors_compatible(stored: str, precision: str) -> bool:
    """Whether vectors of precision ``precision`` can be searched against ``stored`` ones.

    float32 and bfloat16 vectors (either backend) agree to a cosine similarity
    above 0.9999 and mix freely; int8 ones (ONNX with quantized weights) agree
    with them only to about 0.999, so they mix only with each other.
    """
    return (stored == "int8") == (precision == "int8")


def query_compatible(stored: str, precision: str) -> bool:
    """Whether queries embedded in ``precision`` can search ``stored`` vectors: as
    :func:`vectors_compatible`, and float queries over int8 documents, where they rank
    better than int8 queries (docs/BENCHMARKS.md)."""
    return vectors_compatible(stored, precision) or precision != "int8"


def write_refusal(state: VectorState, *, name: str, backend: str,
                  precision: str) -> ConfigError | None:
    """Why vectors of this embedder may not be written into the collection, if they may not."""
    if state.reembedding:
        if vectors_compatible(str(state.target_precision), precision):
            return None
        return ConfigError(
            f"collection {name!r} is being re-embedded into {state.target_precision} vectors "
            f"({state.target_backend} backend), and this embedder makes {precision} vectors "
            f"({backend}): set VERITY_EMBEDDER__BACKEND={state.target_backend} and "
            f"VERITY_EMBEDDER__PRECISION={state.target_precision}, or wait for the re-embed "
            "to finish")
    if vectors_compatible(state.precision, precision):
        return None
    return ConfigError(
        f"collection {name!r} holds {state.precision} vectors made with the {state.backend} "
        f"backend, and this embedder makes {precision} vectors ({backend}): re-embed the "
        f"collection with this embedder (`verity reindex --re-embed --collection {name}`, or "
        f"POST /v1/collections/{name}/reindex with {{\"re_embed\": true}}), set "
        f"VERITY_EMBEDDER__BACKEND={state.backend} and "
        f"VERITY_EMBEDDER__PRECISION={state.precision}, or ingest into a new collection")


def query_refusal(state: VectorState, *, name: str, backend: str,
                  precision: str) -> ConfigError | None:
    """Why queries of this embedder may not search the collection, if they may not.

    During a re-embed the collection holds vectors of both embedders, so the query
    must be compatible with both.
    """
    held = [state.precision] + ([str(state.target_precision)] if state.reembedding else [])
    bad = [p for p in held if not query_compatible(p, precision)]
    if not bad:
        return None
    if state.reembedding:
        return ConfigError(
            f"collection {name!r} is being re-embedded from {state.precision} to "
            f"{state.target_precision} vectors and holds both until it finishes; {precision} "
            f"queries ({backend}) cannot search {bad[0]} vectors: set "
            "VERITY_EMBEDDER__QUERY_PRECISION=float32, or wait for the re-embed to finish")
    return ConfigError(
        f"collection {name!r} holds {state.precision} vectors made with the {state.backend} "
        f"backend, and this embedder makes {precision} vectors ({backend}): set "
        f"VERITY_EMBEDDER__BACKEND={state.backend} and "
        f"VERITY_EMBEDDER__PRECISION={state.precision}, re-embed the collection with this "
        f"embedder (`verity reindex --re-embed --collection {name}`), or ingest into a new "
        "collection")
