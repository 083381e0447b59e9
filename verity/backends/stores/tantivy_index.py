"""BM25 over tantivy: a per-collection index derived from PostgreSQL, which stays the truth.

Each tenant's collection has a directory ``lexical/<tenant>/<collection>/`` under the
data directory holding one tantivy index of its chunks: chunk id, document id, ACL
groups and the chunk's terms from :func:`verity.core.lexical.analyze`, read from the chunk's
postings row in PostgreSQL (joined by spaces and split on whitespace, so tantivy scores our
analysis, not its own). Tantivy finds
the top k with block-max pruning, so a query costs what its terms' postings cost, not
what the collection holds.

The index is a cache. It is built from one PostgreSQL snapshot and kept fresh from the
``changes`` outbox (migration 0006) by one background thread per process, which polls
every ``poll_s`` seconds. How far it has applied is a transaction horizon (every
transaction older than it has been applied), stored in a ``meta`` document of the index
itself, so it is committed atomically with the chunks it describes: a process killed
mid-update restarts from the last commit and re-applies the changes after it (applying
a change is idempotent: the document's chunks are replaced by what PostgreSQL holds).

One process per machine writes an index: the one holding ``<collection>.lock`` (an
advisory lock the kernel releases when the process dies). Others on the same data
directory reopen the index each poll and read it; if the writer dies one of them takes
over. A missing, corrupt or foreign (another collection id) index is rebuilt by the
writer into a fresh directory that replaces the old one; until an index is ready,
:meth:`LexicalIndexes.search` returns ``None`` and the caller falls back to BM25 in
PostgreSQL.
"""

from __future__ import annotations

import fcntl
import logging
import math
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import psycopg
import tantivy

from verity.backends.stores.database import Database, first_line
from verity.backends.stores.outbox import Followers, lag, read_changes
from verity.backends.stores.outbox import IndexKey as IndexKey
from verity.backends.stores.outbox import Lag as Lag
from verity.backends.stores.outbox import horizon as outbox_horizon
from verity.backends.stores.outbox import prune_changes as prune_changes
from verity.core.errors import StoreError

log = logging.getLogger(__name__)

PUBLIC = "public"
"""The ACL term of chunks without groups; a group ``g`` is stored as ``g:<g>``, so no group
name can collide with it."""

_META = "meta"
_FORMAT = "2"
"""Bumped when what an index holds changes (2: ACL terms stored, read to post-filter hits); an
index of another format is rebuilt."""
_WRITER_HEAP = 64_000_000

POST_FILTER_MIN_SHARE = 0.2
"""Share of the index a caller's groups must see for its query to run unfiltered, then filtered."""
POST_FILTER_MAX = 1000
"""The most hits an unfiltered query is asked for before filtering."""

_PRUNE_EVERY_S = 3600.0

# A chunk's terms come analysed already, from its postings row (written with the chunk by
# the same analysis), so building or catching up costs no text analysis here.
_CHUNK_ROWS = """
SELECT k.id, k.document_id, d.acl_groups, coalesce(p.terms, '{}'), coalesce(p.tfs, '{}')
FROM chunks k JOIN documents d ON d.id = k.document_id
LEFT JOIN chunk_postings p ON p.chunk_id = k.id
WHERE k.collection_id = %(collection_id)s
"""

def _schema() -> tantivy.Schema:
    b = tantivy.SchemaBuilder()
    b.add_text_field("kind", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("chunk_id", stored=True, tokenizer_name="raw", index_option="basic")
    b.add_text_field("document_id", stored=False, tokenizer_name="raw", index_option="basic")
    b.add_text_field("acl", stored=True, tokenizer_name="raw", index_option="basic")
    b.add_text_field("body", stored=False, tokenizer_name="whitespace", index_option="freq")
    b.add_text_field("horizon", stored=True, tokenizer_name="raw", index_option="basic")
    b.add_text_field("collection_id", stored=True, tokenizer_name="raw", index_option="basic")
    b.add_text_field("format", stored=True, tokenizer_name="raw", index_option="basic")
    return b.build()


SCHEMA = _schema()


def acl_terms(groups: Iterable[str]) -> list[str]:
    """The ``acl`` terms of a chunk whose document has ``groups`` (the public marker if none)."""
    terms = [f"g:{g}" for g in groups]
    return terms or [PUBLIC]


def _hits(searcher: tantivy.Searcher, hits: Sequence[tuple[float, Any]], *, top_k: int,
          allowed: set[str] | None = None) -> list[tuple[str, float]]:
    """The first ``top_k`` hits as ``(chunk id, score)``, keeping only chunks with an ACL term
    in ``allowed`` when given."""
    found: list[tuple[str, float]] = []
    for score, address in hits:
        doc = searcher.doc(address)
        if allowed is None or not allowed.isdisjoint(doc["acl"]):
            found.append((str(doc["chunk_id"][0]), float(score)))
            if len(found) == top_k:
                break
    return found


def _chunk_document(row: Sequence[Any]) -> tantivy.Document:
    chunk_id, doc_id, groups, terms, counts = row
    # Each term as often as it occurs: the body's length and every term frequency are the
    # analysis's, and BM25 needs nothing else (no positions).
    body = " ".join(" ".join([term] * count) for term, count in zip(terms, counts, strict=True))
    return tantivy.Document(kind="chunk", chunk_id=chunk_id, document_id=doc_id,
                            acl=acl_terms(groups), body=body)


class LexicalIndex:
    """One collection's index directory, written here if this process holds its lock."""

    def __init__(self, db: Database, *, root: Path, key: IndexKey,
                 stop: threading.Event | None = None) -> None:
        self._db = db
        self.key = key
        self._stop = stop or threading.Event()
        self.path = root / key.tenant / key.collection
        self._lock_path = self.path.with_name(f"{key.collection}.lock")
        self._lock: IO[bytes] | None = None
        self._index: tantivy.Index | None = None
        self._writer: Any = None
        self.horizon: int | None = None
        self.lag: Lag | None = None

    @property
    def ready(self) -> bool:
        return self._index is not None

    def refresh(self) -> None:
        """Bring the index up to date: build, apply the outbox, or (as a reader) reopen it."""
        if self._lock is None:
            self._try_lock()
        if self._lock is None:
            self._reopen()
        elif self._index is None:
            self._open_or_build()
        else:
            self._apply_changes()
        if self.horizon is not None:
            with self._db.pool.connection() as conn:
                self.lag = lag(conn, collection_id=self.key.collection_id, since=self.horizon)

    def search(self, terms: Sequence[str], *, groups: Sequence[str] | None,
               top_k: int) -> list[tuple[str, float]] | None:
        """``(chunk id, BM25 score)`` best first, or ``None`` when the index is not ready.

        A caller with ``groups`` sees public chunks and those of its groups. When those are
        at least :data:`POST_FILTER_MIN_SHARE` of the index (estimated from the ACL terms'
        document frequencies), the unfiltered query, which tantivy answers with block-max
        pruning, is asked for enough hits that ``top_k`` of them should be visible, and the
        rest are dropped; if too few were, the filtered query answers. Both rank the visible
        chunks alike (the filter adds nothing to a score), so the choice changes only the
        cost: a required filter clause makes tantivy score every chunk matching a term.
        """
        index = self._index
        if index is None:
            return None
        searcher = index.searcher()
        text = tantivy.Query.boolean_query([
            (tantivy.Occur.Should, tantivy.Query.term_query(SCHEMA, "body", t)) for t in terms
        ])
        if groups is None:
            return _hits(searcher, searcher.search(text, top_k, count=False).hits, top_k=top_k)
        allowed = [f"g:{g}" for g in groups] + [PUBLIC]
        share = sum(searcher.doc_freq("acl", a) for a in allowed) / max(1, searcher.num_docs)
        if share >= POST_FILTER_MIN_SHARE:
            wanted = min(POST_FILTER_MAX, math.ceil(2 * top_k / min(1.0, share)))
            hits = searcher.search(text, wanted, count=False).hits
            found = _hits(searcher, hits, top_k=top_k, allowed=set(allowed))
            if len(found) == top_k or len(hits) < wanted:
                return found
        query = tantivy.Query.boolean_query([
            (tantivy.Occur.Must, text),
            (tantivy.Occur.Must, tantivy.Query.const_score_query(
                tantivy.Query.term_set_query(SCHEMA, "acl", allowed), 0.0)),
        ])
        return _hits(searcher, searcher.search(query, top_k, count=False).hits, top_k=top_k)

    def close(self) -> None:
        self._writer = None
        self._index = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _try_lock(self) -> None:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._lock_path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return
        self._lock = handle
        self._index = None  # reopened as the writer

    def _reopen(self) -> None:
        try:
            index = tantivy.Index.open(str(self.path))
            horizon, cid = _read_meta(index)
        except (ValueError, OSError):
            self._index = None  # not built yet, or being replaced: PostgreSQL answers
            return
        if cid == self.key.collection_id:
            self._index, self.horizon = index, horizon

    def _open_or_build(self) -> None:
        try:
            index = tantivy.Index.open(str(self.path))
            horizon, cid = _read_meta(index)
            if cid != self.key.collection_id:
                raise ValueError(f"index holds collection {cid}")
            self._writer = index.writer(_WRITER_HEAP, 1)
        except (ValueError, OSError) as e:
            log.info("rebuilding lexical index %s/%s: %s", self.key.tenant, self.key.collection, e)
            self._build()
            return
        self._index, self.horizon = index, horizon
        self._apply_changes()

    def _build(self) -> None:
        """Index every chunk from one snapshot into a fresh directory, then swap it in."""
        fresh = self.path.with_name(f"{self.key.collection}.building")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        index = tantivy.Index(SCHEMA, path=str(fresh))
        writer = index.writer(_WRITER_HEAP, 1)
        with self._db.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            horizon = outbox_horizon(conn)
            with conn.cursor(name="lexical_build") as cur:
                cur.itersize = 2000
                cur.execute(_CHUNK_ROWS, {"collection_id": self.key.collection_id})
                for n, row in enumerate(cur):
                    if n % 1000 == 0 and self._stop.is_set():
                        break
                    writer.add_document(_chunk_document(row))
        if self._stop.is_set():  # closing: abandon the build; the next process starts over
            del writer  # let go of the directory before removing it
            shutil.rmtree(fresh, ignore_errors=True)
            return
        _commit(writer, horizon=horizon, collection_id=self.key.collection_id)
        writer.wait_merging_threads()
        self._index = self._writer = None  # let go of the old directory's writer lock
        shutil.rmtree(self.path, ignore_errors=True)
        fresh.rename(self.path)
        self._index = tantivy.Index.open(str(self.path))
        self._writer = self._index.writer(_WRITER_HEAP, 1)
        self.horizon = horizon

    def _apply_changes(self) -> None:
        """Replace the chunks of every document changed since the horizon, in one commit."""
        assert self._index is not None and self.horizon is not None
        read = read_changes(self._db, collection_id=self.key.collection_id, since=self.horizon,
                            rows_sql=_CHUNK_ROWS)
        if read is None:
            return
        upto, docs, rows = read.upto, read.documents, read.rows
        if docs is None:
            log.info("rebuilding lexical index %s/%s: changes it missed were pruned",
                     self.key.tenant, self.key.collection)
            self._build()
            return
        if docs:
            for doc_id in docs:
                self._writer.delete_documents_by_term("document_id", doc_id)
            for row in rows:
                self._writer.add_document(_chunk_document(row))
            _commit(self._writer, horizon=upto, collection_id=self.key.collection_id)
            self._index.reload()
        self.horizon = upto


def stored_index_lags(db: Database, *, root: Path) -> dict[str, Lag | None]:
    """The lag of each index stored under ``root``, by ``tenant/collection``, read from its last
    commit without writing to it (``None``: unreadable, or being built or replaced).

    This is what a process on this data directory would start from; a running service
    reports its own indexes' lag (:meth:`LexicalIndexes.lag`), usually fresher.
    """
    found: dict[str, Lag | None] = {}
    for path in sorted(p for p in root.glob("*/*") if p.is_dir() and p.suffix != ".building"):
        name = f"{path.parent.name}/{path.name}"
        try:
            horizon, cid = _read_meta(tantivy.Index.open(str(path)))
        except (ValueError, OSError):
            found[name] = None
            continue
        with db.pool.connection() as conn:
            found[name] = lag(conn, collection_id=cid, since=horizon)
    return found


def _commit(writer: Any, *, horizon: int, collection_id: int) -> None:
    """Commit pending changes with the horizon they reach, as one atomic tantivy commit."""
    writer.delete_documents_by_term("kind", _META)
    writer.add_document(tantivy.Document(kind=_META, horizon=str(horizon),
                                         collection_id=str(collection_id), format=_FORMAT))
    writer.commit()


def _read_meta(index: tantivy.Index) -> tuple[int, int]:
    """``(horizon, collection id)`` of a committed index.

    Raises:
        ValueError: the index has no meta document (never committed by this module) or is of
            another format.
    """
    searcher = index.searcher()
    hits = searcher.search(tantivy.Query.term_query(SCHEMA, "kind", _META), 1).hits
    if not hits:
        raise ValueError("the index has no horizon")
    meta = searcher.doc(hits[0][1])
    if meta.get_first("format") != _FORMAT:
        raise ValueError(f"the index is of format {meta.get_first('format')}, not {_FORMAT}")
    return int(meta["horizon"][0]), int(meta["collection_id"][0])


class LexicalIndexes(Followers[LexicalIndex]):
    """This process's lexical indexes, kept fresh by one background thread, which also prunes
    old outbox rows once an hour.

    Example:
        >>> with LexicalIndexes(db, root=data_dir / "lexical") as indexes:
        ...     indexes.search(key, terms=["cell"], groups=None, top_k=10)
    """

    kind = "lexical"

    def __init__(self, db: Database, *, root: Path, poll_s: float = 0.2) -> None:
        self._root = root
        self._next_prune = time.monotonic()
        super().__init__(db, poll_s=poll_s)

    def search(self, key: IndexKey, *, terms: Sequence[str], groups: Sequence[str] | None,
               top_k: int) -> list[tuple[str, float]] | None:
        """Hits from the collection's index, or ``None`` until it is ready (use PostgreSQL)."""
        try:
            return self._get(key).search(terms, groups=groups, top_k=top_k)
        except (ValueError, OSError) as e:  # damaged under us: rebuilt when next opened
            log.warning("lexical index %s/%s failed a search (PostgreSQL answered): %s",
                        key.tenant, key.collection, first_line(e))
            return None

    def wait_ready(self, key: IndexKey, *, timeout_s: float = 30.0) -> bool:
        """Whether the collection's index became ready within ``timeout_s``."""
        index = self._get(key)
        deadline = time.monotonic() + timeout_s
        while not index.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        return index.ready

    def _make(self, key: IndexKey) -> LexicalIndex:
        return LexicalIndex(self._db, root=self._root, key=key, stop=self._stop)

    def _each_round(self) -> None:
        with self._guard:
            idle = not self._indexes
        if idle or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + _PRUNE_EVERY_S
        try:
            prune_changes(self._db)
        except (StoreError, psycopg.Error) as e:
            log.warning("old outbox changes not pruned: %s", first_line(e))
