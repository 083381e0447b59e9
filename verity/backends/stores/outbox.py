"""Following PostgreSQL's ``changes`` outbox: what the indexes beside PostgreSQL share.

Every write, re-write, ACL change or delete of a document records a row in ``changes``
(migration 0006) in the same transaction. An index derived from PostgreSQL (the tantivy
lexical index, the in-memory dense index) remembers a transaction *horizon*: every
transaction older than it has been applied. To catch up it reads, from one snapshot, the
documents changed between its horizon and the snapshot's, and their rows as PostgreSQL
holds them now; applying a change is idempotent (a document's chunks are replaced by what
PostgreSQL holds), so a process killed mid-update starts again from its last horizon.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import psycopg

from verity.backends.stores.database import Database, first_line
from verity.core.errors import NotFoundError, StoreError

log = logging.getLogger(__name__)

KEEP_CHANGES_S = 7 * 24 * 3600.0
"""How long outbox rows are kept: an index that has applied nothing for longer is rebuilt."""

_CHANGED_DOCUMENTS = """
SELECT DISTINCT document_id FROM changes
WHERE collection_id = %(collection_id)s AND xid >= %(since)s::xid8 AND xid < %(upto)s::xid8
"""
_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
_PRUNED_UPTO = "SELECT upto::text FROM changes_pruned"
_PRUNE = """
WITH gone AS (
    DELETE FROM changes WHERE created_at < now() - make_interval(secs => %(keep_s)s) RETURNING xid
)
UPDATE changes_pruned SET upto = greatest(upto, (SELECT max(xid) FROM gone))
WHERE EXISTS (SELECT FROM gone)
"""
_LAG = """
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8, count(*) FROM changes
WHERE collection_id = %(collection_id)s AND xid >= %(since)s::xid8
"""
_LATEST = "SELECT max(xid)::text FROM changes WHERE collection_id = %(collection_id)s"


@dataclass(frozen=True)
class IndexKey:
    """Which collection an index holds."""

    tenant: str
    collection: str
    collection_id: int


@dataclass(frozen=True)
class Lag:
    """How far an index is behind PostgreSQL: the changes (outbox rows) it has not applied yet,
    and how long ago the oldest of them was written (0 when none)."""

    seconds: float
    changes: int


@dataclass(frozen=True)
class Changes:
    """What changed in a collection between two horizons: the documents (``None`` when some of
    those changes were pruned, so the index must be rebuilt) and their rows now."""

    upto: int
    documents: list[str] | None
    rows: list[Any]


def horizon(conn: psycopg.Connection[Any]) -> int:
    """Every transaction older than this one has finished (committed or rolled back)."""
    row = conn.execute(_HORIZON).fetchone()
    assert row is not None
    return int(row[0])


def latest_change(conn: psycopg.Connection[Any], *, collection_id: int) -> int | None:
    """The transaction of the collection's newest committed change (``None``: none recorded)."""
    row = conn.execute(_LATEST, {"collection_id": collection_id}).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def read_changes(db: Database, *, collection_id: int, since: int, rows_sql: str
                 ) -> Changes | None:
    """From one snapshot, the changes since horizon ``since`` (``None`` if nothing moved).

    ``rows_sql`` selects the collection's chunk rows (``%(collection_id)s``); the rows of the
    changed documents are read with ``AND k.document_id = ANY(%(docs)s)`` appended.
    """
    with db.pool.connection() as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        upto = horizon(conn)
        if upto <= since:
            return None
        pruned = conn.execute(_PRUNED_UPTO).fetchone()
        if pruned is not None and since <= int(pruned[0]):
            return Changes(upto=upto, documents=None, rows=[])
        params = {"collection_id": collection_id, "since": str(since), "upto": str(upto)}
        docs = [str(r[0]) for r in conn.execute(_CHANGED_DOCUMENTS, params).fetchall()]
        rows = conn.execute(rows_sql + " AND k.document_id = ANY(%(docs)s)",
                            {**params, "docs": docs}).fetchall() if docs else []
    return Changes(upto=upto, documents=docs, rows=rows)


def lag(conn: psycopg.Connection[Any], *, collection_id: int, since: int) -> Lag:
    """How far an index at horizon ``since`` is behind the collection's changes."""
    row = conn.execute(_LAG, {"collection_id": collection_id, "since": str(since)}).fetchone()
    return Lag(seconds=float(row[0]), changes=int(row[1])) if row else Lag(0.0, 0)


def prune_changes(db: Database, *, keep_s: float = KEEP_CHANGES_S) -> None:
    """Delete outbox rows older than ``keep_s`` seconds, recording the newest transaction pruned."""
    with db.pool.connection() as conn:
        conn.execute(_PRUNE, {"keep_s": keep_s})


# --- The indexes of one process, and the thread that keeps them fresh ----------------------

_COLLECTION_ID = "SELECT id FROM collections WHERE tenant = %(tenant)s AND name = %(name)s"
_NEXT_XID = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text"


class FollowingIndex(Protocol):
    """One collection's index derived from PostgreSQL."""

    key: IndexKey
    horizon: int | None
    lag: Lag | None

    @property
    def ready(self) -> bool: ...

    def refresh(self) -> None: ...

    def close(self) -> None: ...


IndexT = TypeVar("IndexT", bound=FollowingIndex)


class Followers(Generic[IndexT]):
    """The indexes of one kind this process holds, by collection, kept fresh from the outbox by
    one background thread that wakes every ``poll_s`` seconds or when asked to.

    Subclasses make an index for a collection (:meth:`_make`) and may do more each round
    (:meth:`_each_round`). A collection's index is made on its first use and built by the
    thread; an index whose collection was deleted is dropped.
    """

    kind = "derived"
    """How the indexes are named in logs: ``lexical``, ``dense``."""

    def __init__(self, db: Database, *, poll_s: float) -> None:
        self._db = db
        self._poll_s = poll_s
        self._indexes: dict[IndexKey, IndexT] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-index", daemon=True)
        self._thread.start()

    def _make(self, key: IndexKey) -> IndexT:
        raise NotImplementedError

    def _each_round(self) -> None:
        """Work of the thread's every round, before the indexes are refreshed."""

    def wait_collection(self, *, tenant: str, collection: str, timeout_s: float = 600.0) -> bool:
        """Whether ``tenant``'s collection's index became ready, caught up with every write
        committed before this call, within ``timeout_s`` (an evaluation waits for it so that
        PostgreSQL's fallback answers none of its queries).

        Raises:
            NotFoundError: the tenant has no collection of that name.
        """
        with self._db.pool.connection() as conn:
            row = conn.execute(_COLLECTION_ID, {"tenant": tenant, "name": collection}).fetchone()
            if row is None:
                raise NotFoundError(f"collection {collection!r} does not exist")
            target = conn.execute(_NEXT_XID).fetchone()
        assert target is not None
        index = self._get(IndexKey(tenant=tenant, collection=collection, collection_id=int(row[0])))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if index.ready and index.horizon is not None and index.horizon >= int(target[0]):
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    def lag(self) -> dict[str, Lag | None]:
        """How far each index is behind, by ``tenant/collection`` (``None`` until it is built)."""
        with self._guard:
            return {f"{k.tenant}/{k.collection}": i.lag for k, i in self._indexes.items()}

    def close(self) -> None:
        """Stop the thread (a build in progress is abandoned) and release the indexes."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with self._guard:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, key: IndexKey) -> IndexT:
        with self._guard:
            index = self._indexes.get(key)
            if index is None:
                index = self._indexes[key] = self._make(key)
                self._wake.set()
            return index

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._each_round()
            with self._guard:
                indexes = list(self._indexes.items())
            for key, index in indexes:
                try:
                    index.refresh()
                except NotFoundError:
                    with self._guard:  # the collection was deleted: forget its index
                        self._indexes.pop(key, None)
                    index.close()
                except (StoreError, psycopg.Error, ValueError, OSError) as e:
                    log.warning("%s index %s/%s not refreshed (searches use PostgreSQL "
                                "meanwhile): %s", self.kind, key.tenant, key.collection,
                                first_line(e))
