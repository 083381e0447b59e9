"""Dense search in memory: each chunk's sign bits and float16 vector, derived from PostgreSQL.

Each process holds, per collection it has searched, every chunk's:

- sign bits (48 bytes for 384 dimensions) in a FAISS ``IndexBinaryFlat``: a query's
  candidates are the codes nearest by Hamming distance, found by scanning all of them
  (4 to 6 ms for a million on one core), so recall does not depend on a graph;
- float16 vector (768 bytes), which rescores the candidates exactly: the scores are the
  cosines PostgreSQL's exact search computes;
- chunk id, document and ACL groups. A caller's filter is a bitmap over the rows
  (``IDSelectorBitmap``): chunks it may not read are never candidates, so a filter never
  under-fills the results, however selective.

PostgreSQL stays the source of truth: hits are fetched from it under the caller's filter
again, so a chunk whose ACL changed since the index last caught up is never returned on
the index's word. The index is built from one snapshot by a background thread and kept
fresh from the ``changes`` outbox (:mod:`verity.backends.stores.outbox`) every ``poll_s``
seconds. A search first asks PostgreSQL for the collection's newest change (an index
lookup); if the index has not applied it yet, the thread is woken and the search waits for
it up to ``fresh_wait_s``, so a query sees the writes committed before it in the usual
case, and changes at most that late otherwise. Until the first build is done,
:meth:`DenseIndexes.search` returns ``None`` and PostgreSQL answers.

Nothing is written to disk: a process that dies loses only its copy, and the next one
builds it again from PostgreSQL (about a minute for a million chunks). Deleted rows are
masked out, and the arrays are compacted once a quarter of them are dead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verity.backends.quantize import quantize_binary
from verity.backends.stores.database import Database
from verity.backends.stores.faiss_search import load_faiss, rescore_float
from verity.backends.stores.outbox import Followers, IndexKey, Lag, lag, read_changes
from verity.backends.stores.outbox import horizon as outbox_horizon
from verity.core.errors import NotFoundError

log = logging.getLogger(__name__)

MIN_CANDIDATES = 1000
"""Binary candidates a search rescores at least: a million codes of 384 bits leave the true
top 10 among the nearest 400 or so; scanning costs the same for 1,000."""

COMPACT_MIN_DEAD = 10_000
"""Deleted rows an index holds at least before it is compacted (and a quarter of all)."""

_STREAM_BATCH = 5000
_CHUNK_ROWS = """
SELECT k.id, k.document_id, d.acl_groups, k.embedding
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = %(collection_id)s
"""


class _ReadWriteLock:
    """Many searches at once, or one update alone; an update waiting goes before new searches,
    so a steady stream of searches cannot keep the index from catching up."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer_waiting = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writer_waiting = True
            try:
                self._cond.wait_for(lambda: not self._readers)
                yield
            finally:
                self._writer_waiting = False
                self._cond.notify_all()


@dataclass
class _Rows:
    """The rows of one index: appended to, masked when deleted, compacted when a quarter are."""

    dim: int
    binary: Any = None
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    acl: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    n: int = 0
    dead: int = 0
    chunk_ids: list[str] = field(default_factory=list)
    doc_rows: dict[str, list[int]] = field(default_factory=dict)
    acl_sets: list[frozenset[str]] = field(default_factory=list)
    acl_ids: dict[frozenset[str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.binary = load_faiss().IndexBinaryFlat(((self.dim + 7) // 8) * 8)
        self.vectors = np.zeros((0, self.dim), np.float16)

    def append(self, rows: Sequence[tuple[str, str, Sequence[str]]], vectors: np.ndarray) -> None:
        """Add ``(chunk id, document id, ACL groups)`` rows with their vectors."""
        m = len(rows)
        if not m:
            return
        if self.n + m > len(self.alive):
            # A quarter more each time: a million-chunk index grows by 0.2 GB, not 0.8.
            capacity = max(len(self.alive) + len(self.alive) // 4, self.n + m, 1024)
            self.vectors = _grown(self.vectors, (capacity, self.dim), np.float16)
            self.alive = _grown(self.alive, (capacity,), bool)
            self.acl = _grown(self.acl, (capacity,), np.int32)
        block = np.asarray(vectors, dtype=np.float16)
        self.binary.add(np.ascontiguousarray(quantize_binary(block)))
        self.vectors[self.n:self.n + m] = block
        self.alive[self.n:self.n + m] = True
        for i, (chunk, doc, groups) in enumerate(rows):
            self.chunk_ids.append(chunk)
            self.doc_rows.setdefault(doc, []).append(self.n + i)
            self.acl[self.n + i] = self._acl_id(frozenset(groups))
        self.n += m

    def trim(self) -> None:
        """Let go of the spare capacity appending left (up to half the arrays after a build)."""
        self.vectors = self.vectors[:self.n].copy()
        self.alive = self.alive[:self.n].copy()
        self.acl = self.acl[:self.n].copy()

    def remove(self, documents: Sequence[str]) -> None:
        for doc in documents:
            rows = self.doc_rows.pop(doc, None)
            if rows:
                self.alive[rows] = False
                self.dead += len(rows)

    def compacted(self) -> _Rows:
        """The live rows alone, in a fresh set of arrays."""
        keep = np.flatnonzero(self.alive[:self.n])
        fresh = _Rows(dim=self.dim)
        doc_of = {row: doc for doc, rows in self.doc_rows.items() for row in rows}
        fresh.append([(self.chunk_ids[r], doc_of[r], tuple(self.acl_sets[self.acl[r]]))
                      for r in keep.tolist()], self.vectors[keep])
        fresh.trim()
        return fresh

    def ram_bytes(self) -> int:
        """Bytes of the arrays (about 820 a chunk); the ids held as Python objects add about
        360 a chunk more."""
        return int(self.n * ((self.dim + 7) // 8) + self.vectors.nbytes + self.alive.nbytes
                   + self.acl.nbytes)

    def _acl_id(self, groups: frozenset[str]) -> int:
        found = self.acl_ids.get(groups)
        if found is None:
            found = self.acl_ids[groups] = len(self.acl_sets)
            self.acl_sets.append(groups)
        return found

    def visible(self, groups: Sequence[str] | None) -> np.ndarray | None:
        """The rows a caller in ``groups`` may see (public ones and its groups'), ``None``: all."""
        if groups is None:
            return self.alive[:self.n] if self.dead else None
        mine = set(groups)
        allowed = np.fromiter((not s or not mine.isdisjoint(s) for s in self.acl_sets),
                              dtype=bool, count=len(self.acl_sets))
        mask: np.ndarray = allowed[self.acl[:self.n]] & self.alive[:self.n]
        return mask


def _grown(array: np.ndarray, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    bigger = np.zeros(shape, dtype=dtype)
    bigger[:len(array)] = array
    return bigger


class DenseIndex:
    """One collection's rows in memory, built and updated by :class:`DenseIndexes`' thread."""

    def __init__(self, db: Database, *, key: IndexKey, stop: threading.Event) -> None:
        self._db = db
        self.key = key
        self._stop = stop
        self._lock = _ReadWriteLock()
        self._rows: _Rows | None = None
        self.horizon: int | None = None
        self.lag: Lag | None = None
        self.applied = threading.Condition()

    @property
    def ready(self) -> bool:
        return self._rows is not None

    def close(self) -> None:
        with self._lock.write():
            self._rows = None

    def ram_bytes(self) -> int:
        rows = self._rows
        return 0 if rows is None else rows.ram_bytes()

    def refresh(self) -> None:
        """Build the index, or apply the outbox changes since its horizon."""
        if self.horizon is None:
            self._build()
        else:
            self._apply_changes()
        if self.horizon is not None:
            with self._db.pool.connection() as conn:
                if conn.execute("SELECT FROM collections WHERE id = %s",
                                (self.key.collection_id,)).fetchone() is None:
                    raise NotFoundError(f"collection {self.key.collection!r} was deleted")
                self.lag = lag(conn, collection_id=self.key.collection_id, since=self.horizon)
        with self.applied:
            self.applied.notify_all()

    def search(self, query: np.ndarray, *, groups: Sequence[str] | None, top_k: int,
               candidates: int) -> list[tuple[str, float]] | None:
        """``(chunk id, cosine)`` best first among the chunks ``groups`` may see (all if
        ``None``), or ``None`` when the index is not built yet."""
        with self._lock.read():
            rows = self._rows
            if rows is None:
                return None
            mask = rows.visible(groups)
            visible = rows.n if mask is None else int(np.count_nonzero(mask))
            if not visible:
                return []
            if visible <= candidates:  # every visible chunk is a candidate: score them all
                found = np.arange(rows.n) if mask is None else np.flatnonzero(mask)
            else:
                found = _nearest_codes(rows, query, mask=mask, k=candidates)
            best, scores = rescore_float(query, rows.vectors[found], found, top_k=top_k)
            return [(rows.chunk_ids[r], float(s)) for r, s in zip(best.tolist(), scores, strict=True)]

    def _build(self) -> None:
        """Read every chunk from one snapshot into fresh arrays, then swap them in."""
        with self._db.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            horizon = outbox_horizon(conn)
            dim_row = conn.execute("SELECT embed_dim FROM collections WHERE id = %s",
                                   (self.key.collection_id,)).fetchone()
            if dim_row is None:
                raise NotFoundError(f"collection {self.key.collection!r} no longer exists")
            fresh = _Rows(dim=int(dim_row[0]))
            with conn.cursor(name="dense_build", binary=True) as cur:
                cur.itersize = _STREAM_BATCH
                cur.execute(_CHUNK_ROWS, {"collection_id": self.key.collection_id})
                while batch := cur.fetchmany(_STREAM_BATCH):
                    if self._stop.is_set():
                        return  # closing: abandon the build
                    _append(fresh, batch)
        fresh.trim()
        with self._lock.write():
            self._rows, self.horizon = fresh, horizon
        log.info("dense index of %s/%s: %d chunks in memory (%.0f MB)", self.key.tenant,
                 self.key.collection, fresh.n, fresh.ram_bytes() / 1e6)

    def _apply_changes(self) -> None:
        assert self.horizon is not None
        read = read_changes(self._db, collection_id=self.key.collection_id, since=self.horizon,
                            rows_sql=_CHUNK_ROWS)
        if read is None:
            return
        if read.documents is None:
            log.info("rebuilding dense index %s/%s: changes it missed were pruned",
                     self.key.tenant, self.key.collection)
            self._build()
            return
        with self._lock.write():
            rows = self._rows
            assert rows is not None
            rows.remove(read.documents)
            _append(rows, read.rows)
            if rows.dead > max(COMPACT_MIN_DEAD, rows.n // 4):
                self._rows = rows.compacted()
            self.horizon = read.upto


def _append(rows: _Rows, batch: Sequence[Any]) -> None:
    if batch:
        rows.append([(str(r[0]), str(r[1]), tuple(r[2])) for r in batch],
                    np.stack([r[3].to_numpy() for r in batch]))


def _nearest_codes(rows: _Rows, query: np.ndarray, *, mask: np.ndarray | None, k: int
                   ) -> np.ndarray:
    """Rows of the ``k`` codes nearest the query's among those ``mask`` keeps (all if ``None``)."""
    faiss = load_faiss()
    code = np.ascontiguousarray(quantize_binary(query.reshape(1, -1)))
    if mask is None:
        _, found = rows.binary.search(code, k)
    else:
        bitmap = np.packbits(mask, bitorder="little")  # held while FAISS reads it
        selector = faiss.IDSelectorBitmap(bitmap)
        _, found = rows.binary.search(code, k, params=faiss.SearchParameters(sel=selector))
        del bitmap
    hits: np.ndarray = found[0]
    return hits[hits >= 0]


class DenseIndexes(Followers[DenseIndex]):
    """This process's in-memory dense indexes, kept fresh by one background thread.

    Example:
        >>> with DenseIndexes(db) as indexes:
        ...     indexes.search(key, query=vector, groups=None, top_k=10)
    """

    kind = "dense"

    def __init__(self, db: Database, *, poll_s: float = 0.2, fresh_wait_s: float = 0.5) -> None:
        self._fresh_wait_s = fresh_wait_s
        super().__init__(db, poll_s=poll_s)

    def search(self, key: IndexKey, *, query: np.ndarray, groups: Sequence[str] | None,
               top_k: int, candidates: int = MIN_CANDIDATES, fresh_after: int | None = None
               ) -> list[tuple[str, float]] | None:
        """Hits from the collection's index, or ``None`` until it is built (use PostgreSQL).

        ``fresh_after`` is the transaction of the collection's newest change
        (:func:`verity.backends.stores.outbox.latest_change`): an index that has not applied
        it is built or brought up to date first, waiting at most ``fresh_wait_s`` (a small
        collection's first search is answered by its index; a large one's by PostgreSQL while
        its index is built).
        """
        index = self._get(key)
        if fresh_after is not None and (index.horizon or 0) <= fresh_after:
            deadline = time.monotonic() + self._fresh_wait_s
            with index.applied:
                while (index.horizon or 0) <= fresh_after and time.monotonic() < deadline:
                    self._wake.set()
                    index.applied.wait(timeout=max(0.0, deadline - time.monotonic()))
        return index.search(query, groups=groups, top_k=top_k,
                            candidates=max(candidates, top_k))

    def ram_bytes(self) -> int:
        """Bytes of the indexes' arrays (:meth:`DenseIndex.ram_bytes`)."""
        with self._guard:
            return sum(i.ram_bytes() for i in self._indexes.values())

    def _make(self, key: IndexKey) -> DenseIndex:
        return DenseIndex(self._db, key=key, stop=self._stop)
