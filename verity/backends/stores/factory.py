"""The one place that knows which class plays the ``Store`` role."""

from __future__ import annotations

from verity.backends.stores.database import Database
from verity.backends.stores.dense_index import DenseIndexes
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.backends.stores.tantivy_index import LexicalIndexes
from verity.core.protocols import Store

STORE_KINDS = ("pgvector",)


def build_store(db: Database, *, kind: str = "pgvector", tenant: str = "default",
                lexical: LexicalIndexes | None = None, dense: DenseIndexes | None = None) -> Store:
    """The store ``kind`` names, over ``db`` and scoped to ``tenant``; BM25 through ``lexical``
    and ``binary-rescore`` dense search through ``dense`` when given.

    Example:
        >>> store = build_store(db, tenant="acme")

    Raises:
        ValueError: an unknown kind.
    """
    match kind:
        case "pgvector":
            return PgvectorStore(db, tenant=tenant, lexical=lexical, dense=dense)
        case other:
            raise ValueError(f"unknown store kind {other!r}; use one of {', '.join(STORE_KINDS)}")
