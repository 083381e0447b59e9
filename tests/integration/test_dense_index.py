"""The in-memory dense index against the embedded Postgres: exact rescoring, ACLs, freshness
within a process and across processes, compaction and rebuilds."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conformance.store import (
    DIM,
    QUERY,
    StoreConformance,
    StoreFactory,
    near,
    write,
    writing,
)
from tests.conftest import make_settings
from tests.helpers import indexed_store, spawn_script
from verity.answering.runtime import Runtime, open_runtime
from verity.backends.stores import dense_index
from verity.backends.stores.database import Database
from verity.backends.stores.dense_index import DenseIndexes
from verity.backends.stores.outbox import IndexKey
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.settings import RetrievalSettings
from verity.core.types import SearchFilter, chunk_id

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def shared_indexes(database: Database) -> Iterator[DenseIndexes]:
    with DenseIndexes(database, poll_s=0.05) as indexes:
        yield indexes


class TestPgvectorStoreWithTheDenseIndex(StoreConformance):
    """The whole store contract with ``binary-rescore`` answered by the in-memory index."""

    @pytest.fixture
    def store_factory(self, database: Database, shared_indexes: DenseIndexes) -> StoreFactory:
        return lambda tenant: PgvectorStore(database, tenant=tenant, dense=shared_indexes)


@pytest.fixture
def indexes(database: Database) -> Iterator[DenseIndexes]:
    with DenseIndexes(database, poll_s=0.05) as idx:
        yield idx


def _setup(database: Database, indexes: DenseIndexes | None, collection: str
           ) -> tuple[PgvectorStore, IndexKey]:
    store: PgvectorStore
    key: IndexKey
    store, key = indexed_store(database, tenant=f"dense-{uuid.uuid4().hex[:8]}",
                               collection=collection, dense=indexes)
    return store, key


def _random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


def test_hits_are_postgres_exact_search_when_every_code_is_a_candidate(
        database: Database, indexes: DenseIndexes, collection: str) -> None:
    store, key = _setup(database, indexes, collection)
    rng = np.random.default_rng(7)
    stored: dict[str, np.ndarray] = {}
    for i in range(30):
        w_vectors = _random_unit(rng, 4)
        w = writing(store, collection, f"d{i}.md", [f"t{i}-{j}" for j in range(4)])
        store.write_document(collection=collection, document=w.document, chunks=w.chunks,
                             embeddings=w_vectors)
        stored.update({c.id: v for c, v in zip(w.chunks, w_vectors, strict=True)})
    assert indexes.wait_collection(tenant=key.tenant, collection=collection, timeout_s=30)
    for query in _random_unit(rng, 5):
        indexed = store.search_dense(collection=collection, query=query, top_k=10,
                                     mode="binary-rescore")
        exact = store.search_dense(collection=collection, query=query, top_k=10, mode="float")
        assert [h.chunk.id for h in indexed] == [h.chunk.id for h in exact]
        assert [h.score for h in indexed] == pytest.approx([h.score for h in exact], abs=2e-3)
    # Through the Hamming scan (fewer candidates than chunks): a stored vector finds itself.
    for cid, vector in list(stored.items())[::10]:
        scan = indexes.search(key, query=vector, groups=None, top_k=3, candidates=10)
        assert scan is not None and scan[0][0] == cid and scan[0][1] == pytest.approx(1, abs=2e-3)


def test_a_filter_is_a_bitmap_so_a_selective_one_still_fills_its_results(
        database: Database, indexes: DenseIndexes, collection: str) -> None:
    # 200 chunks near the query are the board's; the caller's 5 are the farthest of all.
    store, key = _setup(database, indexes, collection)
    for i in range(20):
        write(store, collection, f"board{i}.md", [f"b{i}-{j}" for j in range(10)],
              flips=[j % 4 for j in range(10)], groups=("board",))
    mine = write(store, collection, "mine.md", [f"m{j}" for j in range(5)],
                 flips=[12, 13, 14, 15, 11], groups=("eng",))
    assert indexes.wait_collection(tenant=key.tenant, collection=collection, timeout_s=30)
    hits = indexes.search(key, query=QUERY, groups=("eng",), top_k=5, candidates=5)
    assert [c for c, _ in hits or []] == [chunk_id(mine, j) for j in (4, 0, 1, 2, 3)]
    # Fewer candidates than visible chunks: the Hamming scan, through the bitmap.
    hits = indexes.search(key, query=QUERY, groups=("eng",), top_k=3, candidates=3)
    assert [c for c, _ in hits or []] == [chunk_id(mine, j) for j in (4, 0, 1)]
    assert indexes.search(key, query=QUERY, groups=("hr",), top_k=5) == []
    board = store.search_dense(collection=collection, query=QUERY, top_k=20,
                               mode="binary-rescore", where=SearchFilter(groups=("board",)))
    assert len(board) == 20 and {h.source for h in board} <= {f"board{i}.md" for i in range(20)}


def test_a_search_sees_the_writes_committed_before_it(
        database: Database, indexes: DenseIndexes, collection: str) -> None:
    store, key = _setup(database, indexes, collection)
    write(store, collection, "far.md", ["far"], flips=[6])
    assert indexes.wait_collection(tenant=key.tenant, collection=collection, timeout_s=30)

    def top(where: SearchFilter | None = None) -> list[str]:
        return [h.source for h in store.search_dense(collection=collection, query=QUERY,
                                                     top_k=5, mode="binary-rescore", where=where)]

    for round_ in range(5):  # each time, the very next search
        near_doc = write(store, collection, "near.md", ["near"], flips=[0],
                         version=str(round_), groups=("hr",) if round_ % 2 else ())
        assert top(SearchFilter(groups=("eng",))) == (["far.md"] if round_ % 2
                                                      else ["near.md", "far.md"])
        assert top(SearchFilter(groups=("hr",)))[0] == "near.md"
        assert store.delete_document_by_id(near_doc)
        assert top() == ["far.md"]
    lag = indexes.lag()[f"{key.tenant}/{collection}"]
    assert lag is not None and lag.changes == 0


def test_deleted_rows_are_compacted_away(
        database: Database, indexes: DenseIndexes, collection: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense_index, "COMPACT_MIN_DEAD", 10)
    store, key = _setup(database, indexes, collection)
    docs = [write(store, collection, f"d{i}.md", [f"t{i}-{j}" for j in range(4)],
                  flips=[(i + j) % DIM for j in range(4)]) for i in range(12)]
    assert indexes.wait_collection(tenant=key.tenant, collection=collection, timeout_s=30)
    before = indexes.ram_bytes()
    for doc in docs[:9]:
        assert store.delete_document_by_id(doc)
    assert indexes.wait_collection(tenant=key.tenant, collection=collection, timeout_s=30)
    assert indexes.ram_bytes() < before
    hits = indexes.search(key, query=QUERY, groups=None, top_k=50)
    assert sorted(c for c, _ in hits or []) == sorted(
        chunk_id(d, j) for d in docs[9:] for j in range(4))


# A second process on the same database (another replica): it builds its index, says
# "ready", then prints each change of its top hits for the query, from its index only.
REPLICA = """
import sys, time
import numpy as np
from verity.backends.stores.database import Database
from verity.backends.stores.dense_index import DenseIndexes
from verity.backends.stores.outbox import IndexKey
from verity.core.settings import StoreSettings
from pathlib import Path
dsn, root, tenant, name, cid, groups = sys.argv[1:7]
db = Database(StoreSettings(dsn=dsn), data_dir=Path(root)).open()
indexes = DenseIndexes(db, poll_s=0.05)
key = IndexKey(tenant=tenant, collection=name, collection_id=int(cid))
assert indexes.wait_collection(tenant=tenant, collection=name, timeout_s=30)
query = np.full(16, 0.25, dtype=np.float32)
print("ready", flush=True)
last = None
while True:
    hits = sorted(c for c, _ in indexes.search(
        key, query=query, groups=groups.split(",") if groups else None, top_k=100) or [])
    if hits != last:
        print(" ".join(hits) or "-", flush=True)
        last = hits
    time.sleep(0.01)
"""


def spawn_replica(database: Database, *, root: Path, key: IndexKey,
                  groups: tuple[str, ...] | None = None
                  ) -> AbstractContextManager[subprocess.Popen[str]]:
    return spawn_script(REPLICA, database.conninfo, str(root), key.tenant, key.collection,
                        str(key.collection_id), ",".join(groups or ()))


def test_writes_deletes_and_acl_changes_reach_a_second_process_within_a_second(
        database: Database, tmp_path: Path, collection: str) -> None:
    assert np.allclose(QUERY, near(0))  # the replica's query
    store, key = _setup(database, None, collection)
    write(store, collection, "old.md", ["old"], flips=[3])
    with spawn_replica(database, root=tmp_path, key=key, groups=("eng",)) as replica:
        assert replica.stdout is not None
        assert len(replica.stdout.readline().split()) == 1
        changes: list[tuple[Callable[[], object], int]] = [
            (lambda: write(store, collection, "new.md", ["new"], flips=[1]), 2),
            (lambda: write(store, collection, "new.md", ["new"], flips=[1], version="2",
                           groups=("board",)), 1),
            (lambda: write(store, collection, "new.md", ["new"], flips=[1], version="3",
                           groups=("eng",)), 2),
            (lambda: store.delete_document(collection=collection, source="new.md"), 1),
        ]
        for change, expected in changes:
            started = time.monotonic()
            change()
            assert len(replica.stdout.readline().split()) == expected
            assert time.monotonic() - started < 1.0


def test_a_process_killed_mid_update_loses_nothing(
        database: Database, tmp_path: Path, collection: str) -> None:
    store, key = _setup(database, None, collection)
    with spawn_replica(database, root=tmp_path, key=key) as replica:
        docs = [write(store, collection, f"d{i}.md", [f"t{i}"], flips=[i % DIM])
                for i in range(30)]
        os.kill(replica.pid, 9)  # whatever it was applying, mid-way or not
    with spawn_replica(database, root=tmp_path, key=key) as again:
        assert again.stdout is not None
        assert sorted(again.stdout.readline().split()) == sorted(chunk_id(d, 0) for d in docs)


def test_readyz_and_metrics_report_the_lag_without_naming_tenants(
        retrieval_runtime: Runtime, indexes: DenseIndexes, collection: str) -> None:
    store, key = _setup(retrieval_runtime.db, indexes, collection)
    write(store, collection, "doc.md", ["a stork stands"])
    assert indexes.wait_collection(tenant=key.tenant, collection=collection, timeout_s=30)
    runtime = replace(retrieval_runtime, dense=indexes)
    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        ready = client.get("/readyz").json()
        text = client.get("/metrics").text
    name = f"{key.tenant}/{collection}"
    assert ready["dense_lag_changes"][name] == 0 and ready["dense_lag_s"][name] < 1.0
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines()
                   if line.startswith("verity_dense"))
    assert samples['verity_dense_indexes{state="ready"}'] == "1.0"
    assert samples['verity_dense_indexes{state="building"}'] == "0.0"
    assert samples["verity_dense_index_lag_changes"] == "0.0"
    assert key.tenant not in text and collection not in text


def test_the_setting_routes_binary_rescore_through_the_index_by_default(data_dir: Path) -> None:
    assert RetrievalSettings().dense_index == "memory"
    settings = make_settings(data_dir)
    with open_runtime(settings, generator=False, reranker=False) as runtime:
        assert runtime.dense is not None
        assert runtime.store_for("other")._dense is runtime.dense  # type: ignore[attr-defined]
    off = make_settings(data_dir, retrieval=RetrievalSettings(dense_index="postgres"))
    with open_runtime(off, generator=False, reranker=False) as runtime:
        assert runtime.dense is None
