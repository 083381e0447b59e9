"""The tantivy lexical index against the embedded Postgres: ranking, ACLs, freshness across
processes, rebuilds and a writer killed mid-update."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ingest.pipeline import IngestPipeline
from service.app import create_app
from tests.conformance.store import DIM, MODEL, write
from tests.conftest import make_settings
from tests.helpers import VERITY, cli_env, indexed_store, spawn_script
from verity.answering.runtime import Runtime, open_runtime
from verity.backends.stores.api_keys import ApiKeys
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.backends.stores.tantivy_index import (
    IndexKey,
    LexicalIndex,
    LexicalIndexes,
    prune_changes,
)
from verity.core.lexical import analyze
from verity.core.settings import ChunkingSettings, RetrievalSettings, StoreSettings
from verity.core.types import Document, SearchFilter, Section, chunk_id

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

CORPUS = {
    "cells": ["Stem cells divide and renew the tissue", "Cells signal through calcium waves"],
    "heart": ["The heart pumps blood through the arteries", "Blood pressure rises with salt"],
    "brain": ["Neurons in the brain fire in bursts", "Sleep clears waste from the brain"],
    "mixed": ["Calcium and salt in the blood of heart cells", "Bursts of neurons and blood flow"],
}
QUERIES = ["blood", "brain neurons", "calcium cells", "salt heart blood", "stem tissue renew"]

# A process on the same database with its own data directory (another replica): it builds
# its index, says "ready", then reports each change of the hits for one query as they
# come from its index (never from PostgreSQL).
REPLICA = """
import sys, time
from pathlib import Path
from verity.backends.stores.database import Database
from verity.backends.stores.tantivy_index import IndexKey, LexicalIndexes, prune_changes
from verity.core.settings import StoreSettings
dsn, root, tenant, name, cid, term, groups = sys.argv[1:8]
db = Database(StoreSettings(dsn=dsn), data_dir=Path(root)).open()
indexes = LexicalIndexes(db, root=Path(root) / "lexical", poll_s=0.05)
key = IndexKey(tenant=tenant, collection=name, collection_id=int(cid))
assert indexes.wait_ready(key, timeout_s=30)
last = None
print("ready", flush=True)
while True:
    hits = sorted(c for c, _ in indexes.search(
        key, terms=[term], groups=groups.split(",") if groups else None, top_k=100) or [])
    if hits != last:
        print(" ".join(hits) or "-", flush=True)
        last = hits
    time.sleep(0.01)
"""


def eventually(check: Callable[[], bool], *, within_s: float = 1.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def spawn_replica(database: Database, *, root: Path, key: IndexKey, term: str,
                  groups: tuple[str, ...] | None = None
                  ) -> AbstractContextManager[subprocess.Popen[str]]:
    """A second process running :data:`REPLICA` with data directory ``root``, once ready; it
    searches as a caller in ``groups`` (unfiltered if ``None``)."""
    return spawn_script(REPLICA, database.conninfo, str(root), key.tenant, key.collection,
                        str(key.collection_id), term, ",".join(groups or ()))


@pytest.fixture
def tenant() -> str:
    return f"lex-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def indexes(database: Database, tmp_path: Path) -> Iterator[LexicalIndexes]:
    with LexicalIndexes(database, root=tmp_path / "lexical", poll_s=0.05) as idx:
        yield idx


def _setup(database: Database, *, tenant: str, collection: str,
           lexical: LexicalIndexes | None) -> tuple[PgvectorStore, IndexKey]:
    store: PgvectorStore
    key: IndexKey
    store, key = indexed_store(database, tenant=tenant, collection=collection, lexical=lexical)
    return store, key


def _ids(indexes: LexicalIndexes, key: IndexKey, term: str, *,
         groups: tuple[str, ...] | None = None) -> set[str]:
    hits = indexes.search(key, terms=analyze(term), groups=groups, top_k=1000)
    return {c for c, _ in hits or []}


def test_ranking_equals_postgres_bm25_with_the_same_parameters(
        database: Database, indexes: LexicalIndexes, tenant: str, collection: str) -> None:
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=indexes)
    for source, texts in CORPUS.items():
        write(store, collection, source, texts)
    write(store, collection, "filler", [f"unrelated filler note {i} on {'x' * i}" for i in range(1, 25)])
    assert indexes.wait_ready(key)
    plain = PgvectorStore(database, tenant=tenant)
    for query in QUERIES:
        indexed = store.search_lexical(collection=collection, query=query, top_k=20)
        # tantivy's b is 0.75. Its N and average length also count the one document that
        # records how far the index has applied PostgreSQL's changes (3% here, less in any
        # real collection), and it breaks ties in index order: ties are put in id order.
        reference = plain.search_lexical(collection=collection, query=query, top_k=20, b=0.75)
        assert [h.chunk.id for h in sorted(indexed, key=lambda h: (-round(h.score, 4), h.chunk.id))
                ] == [h.chunk.id for h in reference], query
        for got, want in zip(sorted(indexed, key=lambda h: h.chunk.id),
                             sorted(reference, key=lambda h: h.chunk.id), strict=True):
            assert got.score == pytest.approx(want.score, rel=0.05), query


def test_acl_restricted_chunks_never_reach_outsiders(
        database: Database, indexes: LexicalIndexes, tenant: str, collection: str) -> None:
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=indexes)
    opened = write(store, collection, "open", ["quarterly plans in public"])
    secret = write(store, collection, "secret", ["quarterly plans for layoffs"], groups=("hr",))
    assert indexes.wait_ready(key)
    outsider, insider = SearchFilter(groups=("eng",)), SearchFilter(groups=("hr",))
    assert _ids(indexes, key, "quarterly", groups=("eng",)) == {chunk_id(opened, 0)}
    assert len(_ids(indexes, key, "quarterly", groups=("hr",))) == 2
    assert store.search_lexical(collection=collection, query="layoffs", top_k=5,
                                where=outsider) == []
    assert [h.chunk.document_id for h in store.search_lexical(
        collection=collection, query="layoffs", top_k=5, where=insider)] == [secret]


def test_a_filtered_query_ranks_visible_chunks_as_the_unfiltered_one_does(
        database: Database, indexes: LexicalIndexes, tenant: str, collection: str) -> None:
    # "half" sees about half the index (its query runs unfiltered, then drops what it may
    # not see), "few" a twentieth (the filter runs inside tantivy): both must rank what they
    # see exactly as the unfiltered ranking does, and never see more.
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=indexes)
    visible: dict[str, set[str]] = {"half": set(), "few": set()}
    for i in range(40):
        group = "half" if i % 2 == 0 else "few" if i % 20 == 1 else "other"
        doc = write(store, collection, f"d{i}", [f"blood {'filler ' * (i % 29)}note {i}"],
                    groups=(group,))
        visible.setdefault(group, set()).add(chunk_id(doc, 0))
    assert indexes.wait_ready(key)
    ranking = [c for c, _ in indexes.search(key, terms=["blood"], groups=None, top_k=100) or []]
    assert len(ranking) == 40
    for group in ("half", "few"):
        for top_k in (1, 3, 10):
            hits = indexes.search(key, terms=["blood"], groups=(group,), top_k=top_k)
            assert [c for c, _ in hits or []] == [c for c in ranking if c in visible[group]][
                :top_k], (group, top_k)


def test_a_filtered_query_whose_best_matches_are_hidden_still_fills_its_results(
        database: Database, indexes: LexicalIndexes, tenant: str, collection: str) -> None:
    # The caller sees half the index, but the twelve best "otter" chunks are hidden from it:
    # the unfiltered query's first hits are all dropped, and the filtered one must answer.
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=indexes)
    for i in range(12):
        write(store, collection, f"hidden{i}", ["otter otter otter"], groups=("other",))
    seen = [write(store, collection, f"seen{i}", [f"an otter among {'many words ' * (5 + i)}"],
                  groups=("mine",)) for i in range(2)]
    for i in range(14):
        write(store, collection, f"plain{i}", [f"a heron {i}"], groups=("mine",))
    assert indexes.wait_ready(key)
    hits = indexes.search(key, terms=["otter"], groups=("mine",), top_k=2)
    assert [c for c, _ in hits or []] == [chunk_id(d, 0) for d in seen]


SALARY_SECRET = "The 2025 salary band for staff engineers is 180,000 to 210,000 euros."
SALARY_PUBLIC = "Engineers are reviewed twice a year; the salary review happens in March."


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_acls_and_filters_hold_through_the_service_with_the_index(
        retrieval_runtime: Runtime, indexes: LexicalIndexes, tenant: str, collection: str,
        mode: str) -> None:
    docs = [Document(source=source, title=source, sections=(Section(text),),
                     content_hash=source, acl_groups=groups, metadata={"dept": dept})
            for source, text, groups, dept in [
                ("handbook.md", SALARY_PUBLIC, (), "eng"),
                ("salaries.md", SALARY_SECRET, ("hr",), "hr"),
                *[(f"note{i}.md", f"Staff note {i} on engineers and reviews", ("hr",), "hr")
                  for i in range(4)]]]
    store = PgvectorStore(retrieval_runtime.db, tenant=tenant, lexical=indexes)
    assert IngestPipeline(store=store, embedder=retrieval_runtime.embedder,
                          chunking=ChunkingSettings()).ingest_documents(docs, collection=collection).ok
    assert indexes.wait_collection(tenant=tenant, collection=collection, timeout_s=30)
    keys = ApiKeys(retrieval_runtime.db)
    hr, eng = (keys.create(tenant=tenant, groups=g)[0] for g in (("hr",), ("engineering",)))
    settings = retrieval_runtime.settings.model_copy(update={
        "server": retrieval_runtime.settings.server.model_copy(update={"auth": True})})
    runtime = replace(retrieval_runtime, settings=settings, lexical=indexes)

    def search(key: str, **extra: object) -> list[str]:
        body = {"query": "salary band for staff engineers", "collection": collection,
                "mode": mode, "top_k": 10, **extra}
        r = client.post("/v1/search", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return [h["document"] for h in r.json()["results"]]

    with TestClient(create_app(settings, runtime=runtime)) as client:
        assert search(hr)[0] == "salaries.md"
        assert search(eng) == ["handbook.md"]
        assert "salaries.md" not in search(hr, filters={"dept": "eng"})
        assert set(search(hr, filters={"dept": "hr"})) <= {"salaries.md"} | {
            f"note{i}.md" for i in range(4)}


def test_an_acl_change_takes_effect_within_a_second(
        database: Database, indexes: LexicalIndexes, tenant: str, collection: str) -> None:
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=indexes)
    write(store, collection, "memo", ["merger talks memo"])
    assert indexes.wait_ready(key)
    assert eventually(lambda: len(_ids(indexes, key, "merger", groups=())) == 1)
    write(store, collection, "memo", ["merger talks memo"], version="2", groups=("board",))
    assert store.search_lexical(collection=collection, query="merger", top_k=5,
                                where=SearchFilter(groups=())) == []
    assert eventually(lambda: not _ids(indexes, key, "merger", groups=()))
    assert len(_ids(indexes, key, "merger", groups=("board",))) == 1


def test_writes_and_deletes_reach_a_second_process_within_a_second(
        database: Database, tmp_path: Path, tenant: str, collection: str) -> None:
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=None)
    write(store, collection, "old", ["an aardvark digs"])
    with spawn_replica(database, root=tmp_path, key=key, term="aardvark") as replica:
        assert replica.stdout is not None
        assert len(replica.stdout.readline().split()) == 1
        started = time.monotonic()
        new = write(store, collection, "new", ["another aardvark eats ants"])
        assert len(replica.stdout.readline().split()) == 2
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        assert store.delete_document_by_id(new)
        assert len(replica.stdout.readline().split()) == 1
        assert time.monotonic() - started < 1.0


def test_an_acl_change_reaches_a_second_process_within_a_second(
        database: Database, tmp_path: Path, tenant: str, collection: str) -> None:
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=None)
    write(store, collection, "memo", ["takeover memo"], groups=("board",))
    with spawn_replica(database, root=tmp_path, key=key, term="takeov",
                       groups=("eng",)) as replica:
        assert replica.stdout is not None
        assert replica.stdout.readline().strip() == "-"  # the board's memo is hidden
        started = time.monotonic()
        write(store, collection, "memo", ["takeover memo"], version="2", groups=("eng",))
        assert len(replica.stdout.readline().split()) == 1
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        write(store, collection, "memo", ["takeover memo"], version="3", groups=("board",))
        assert replica.stdout.readline().strip() == "-"
        assert time.monotonic() - started < 1.0


def test_a_corrupt_index_is_rebuilt_from_postgres(
        database: Database, tmp_path: Path, tenant: str, collection: str) -> None:
    root = tmp_path / "lexical"
    with LexicalIndexes(database, root=root, poll_s=0.05) as first:
        store, key = _setup(database, tenant=tenant, collection=collection, lexical=first)
        write(store, collection, "doc", ["a walrus basks", "the walrus swims"])
        assert first.wait_ready(key)
    for name in os.listdir(root / tenant / collection):
        if name.endswith(".json") or name.endswith(".idx"):
            (root / tenant / collection / name).write_bytes(b"\x00garbage")
    with LexicalIndexes(database, root=root, poll_s=0.05) as second:
        store = PgvectorStore(database, tenant=tenant, lexical=second)
        # PostgreSQL answers while the index is rebuilt.
        assert len(store.search_lexical(collection=collection, query="walrus", top_k=5)) == 2
        assert second.wait_ready(key)
        assert len(_ids(second, key, "walrus")) == 2


def test_a_build_abandoned_at_close_leaves_nothing_half_built(
        database: Database, tmp_path: Path, tenant: str, collection: str) -> None:
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=None)
    write(store, collection, "doc", ["an okapi grazes", "the okapi hides"])
    stopping = threading.Event()
    stopping.set()  # as when the process closes its indexes during a build
    index = LexicalIndex(database, root=tmp_path / "lexical", key=key, stop=stopping)
    index.refresh()
    assert not index.ready
    assert not (tmp_path / "lexical" / tenant / f"{collection}.building").exists()
    assert index.search(analyze("okapi"), groups=None, top_k=5) is None
    index.close()
    with LexicalIndexes(database, root=tmp_path / "lexical", poll_s=0.05) as fresh:
        assert fresh.wait_ready(key)
        assert len(_ids(fresh, key, "okapi")) == 2


def test_a_writer_killed_mid_update_loses_nothing(
        database: Database, tmp_path: Path, tenant: str, collection: str) -> None:
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=None)
    write(store, collection, "seed", ["a narwhal sings"])
    with spawn_replica(database, root=tmp_path, key=key, term="narwhal") as writer:
        for i in range(60):  # the writer applies these as they come; it dies among them
            write(store, collection, f"doc-{i}", [f"narwhal number {i}", f"more narwhal {i}"])
            if i == 30:
                writer.send_signal(signal.SIGKILL)
    with LexicalIndexes(database, root=tmp_path / "lexical", poll_s=0.05) as restarted:
        assert restarted.wait_ready(key)
        assert eventually(lambda: len(_ids(restarted, key, "narwhal")) == 121, within_s=5)


def test_readyz_reports_each_index_lag(retrieval_runtime: Runtime, indexes: LexicalIndexes,
                                       tenant: str, collection: str) -> None:
    store, key = _setup(retrieval_runtime.db, tenant=tenant, collection=collection,
                        lexical=indexes)
    write(store, collection, "doc", ["a heron waits"])
    assert indexes.wait_ready(key)
    runtime = replace(retrieval_runtime, lexical=indexes)
    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        lag = client.get("/readyz").json()["lexical_lag_s"]
    assert lag[f"{tenant}/{collection}"] is not None and lag[f"{tenant}/{collection}"] < 1.0


def test_metrics_report_the_lag_without_naming_tenants(
        retrieval_runtime: Runtime, indexes: LexicalIndexes, tenant: str, collection: str) -> None:
    store, key = _setup(retrieval_runtime.db, tenant=tenant, collection=collection,
                        lexical=indexes)
    write(store, collection, "doc", ["a stork stands"])
    assert indexes.wait_ready(key)
    runtime = replace(retrieval_runtime, lexical=indexes)
    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        assert eventually(lambda: client.get("/readyz").json()["lexical_lag_changes"][
            f"{tenant}/{collection}"] == 0)
        text = client.get("/metrics").text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines()
                   if line.startswith("verity_lexical"))
    assert samples['verity_lexical_indexes{state="ready"}'] == "1.0"
    assert samples["verity_lexical_index_lag_changes"] == "0.0"
    assert 0 <= float(samples["verity_lexical_index_lag_seconds"]) < 1.0
    assert tenant not in text and collection not in text


def test_status_shows_how_far_each_stored_index_is_behind(tmp_path: Path, collection: str
                                                          ) -> None:
    with Database(StoreSettings(), data_dir=tmp_path) as db:
        with LexicalIndexes(db, root=tmp_path / "lexical", poll_s=0.05) as built:
            store, key = _setup(db, tenant="default", collection=collection, lexical=built)
            write(store, collection, "first", ["an ibis wades"])
            assert built.wait_ready(key)
        write(store, collection, "second", ["the ibis flies"])  # while no index was kept fresh
    done = subprocess.run([*VERITY, "status", "--json"], env=cli_env(tmp_path), cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout)
    lag = shown["lexical_indexes"][f"default/{collection}"]
    assert lag["changes"] >= 1 and lag["seconds"] >= 0
    assert shown["dense_index"] == "memory"


def test_an_index_older_than_the_pruned_outbox_is_rebuilt(
        database: Database, tmp_path: Path, tenant: str, collection: str) -> None:
    root = tmp_path / "lexical"
    with LexicalIndexes(database, root=root, poll_s=0.05) as first:
        store, key = _setup(database, tenant=tenant, collection=collection, lexical=first)
        write(store, collection, "early", ["an otter floats"])
        assert first.wait_ready(key)
    write(store, collection, "late", ["the otter dives"])  # while no index was kept fresh
    prune_changes(database, keep_s=0)
    with LexicalIndexes(database, root=root, poll_s=0.05) as second:
        assert second.wait_ready(key)
        assert eventually(lambda: len(_ids(second, key, "otter")) == 2)


def test_a_second_process_on_the_same_data_directory_reads_the_writers_index(
        database: Database, tmp_path: Path, tenant: str, collection: str) -> None:
    store, key = _setup(database, tenant=tenant, collection=collection, lexical=None)
    write(store, collection, "first", ["a lemur leaps"])
    with spawn_replica(database, root=tmp_path, key=key, term="lemur"), \
            LexicalIndexes(database, root=tmp_path / "lexical", poll_s=0.05) as reader:
        assert reader.wait_ready(key)
        write(store, collection, "second", ["the lemur naps"])
        assert eventually(lambda: len(_ids(reader, key, "lemur")) == 2)


def test_the_setting_routes_bm25_through_the_index_by_default(data_dir: Path,
                                                             collection: str) -> None:
    with open_runtime(make_settings(data_dir), generator=False) as runtime:
        assert runtime.lexical is not None
        store = runtime.store_for("acme")
        store.ensure_collection(collection, embed_model=MODEL, embed_dim=DIM)
        write(store, collection, "doc", ["a bison grazes"])
        assert len(store.search_lexical(collection=collection, query="bison", top_k=5)) == 1
        assert f"acme/{collection}" in runtime.lexical.lag()


def test_the_postgres_setting_keeps_bm25_in_postgres(data_dir: Path) -> None:
    settings = make_settings(data_dir, retrieval=RetrievalSettings(lexical="postgres"))
    with open_runtime(settings, generator=False) as runtime:
        assert runtime.lexical is None
