"""The contract every ``Store`` implementation must keep, as a reusable class of tests.

Subclass :class:`StoreConformance` in a test module and give it a ``store_factory``
fixture: a callable that returns the implementation scoped to the tenant it is given.
Every test runs in a tenant of its own, so tests never see each other's collections.

Vectors need no embedder: :func:`near` makes unit vectors whose distance to the query
:data:`QUERY` grows with one integer, the same way for every dense mode.

Example:
    >>> class TestMyStore(StoreConformance):
    ...     @pytest.fixture
    ...     def store_factory(self, database: Database) -> StoreFactory:
    ...         return lambda tenant: MyStore(database, tenant=tenant)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, get_args

import numpy as np
import pytest

from verity.core.errors import ConfigError, ConflictError, NotFoundError, StoreError
from verity.core.protocols import DocumentWrite, Store
from verity.core.types import (
    Chunk,
    DenseMode,
    Document,
    MetadataCondition,
    SearchFilter,
    Section,
    chunk_id,
    document_id,
)

StoreFactory = Callable[[str], Store]
"""Returns the store under test, scoped to the tenant given."""

DIM = 16
MODEL = "conformance-model"
DENSE_MODES: tuple[DenseMode, ...] = get_args(DenseMode)
OUTSIDERS = [SearchFilter(groups=()), SearchFilter(groups=("engineering",))]


def near(flips: int, *, dim: int = DIM) -> np.ndarray:
    """A unit vector that differs from :data:`QUERY` in the sign of its first ``flips`` components.

    Its cosine to the query is ``1 - 2 * flips / dim`` and the Hamming distance between
    their sign bits is ``flips``, so float, binary and rescored search all rank by ``flips``.
    """
    vector = np.full(dim, 1 / np.sqrt(dim), dtype=np.float32)
    vector[:flips] *= -1
    return vector


QUERY = near(0)


def write(store: Store, collection: str, source: str, texts: Sequence[str], *,
          flips: Sequence[int] | None = None, version: str = "1", groups: tuple[str, ...] = (),
          metadata: Mapping[str, Any] | None = None, chunk_ids: Sequence[str] | None = None,
          dim: int = DIM) -> str:
    """Write a document with one chunk per text (vectors ``near(flips[i])``); returns its id."""
    w = writing(store, collection, source, texts, flips=flips, version=version, groups=groups,
                metadata=metadata, chunk_ids=chunk_ids, dim=dim)
    return store.write_document(collection=collection, document=w.document, chunks=w.chunks,
                                embeddings=w.embeddings)


def writing(store: Store, collection: str, source: str, texts: Sequence[str], *,
            flips: Sequence[int] | None = None, version: str = "1", groups: tuple[str, ...] = (),
            metadata: Mapping[str, Any] | None = None, chunk_ids: Sequence[str] | None = None,
            dim: int = DIM) -> DocumentWrite:
    """The document :func:`write` writes, for ``Store.write_documents``."""
    doc_id = document_id(collection=f"{store.tenant}/{collection}", source=source)
    document = Document(source=source, title="", sections=tuple(Section(t) for t in texts),
                        content_hash=f"{source}@{version}", metadata=dict(metadata or {}),
                        acl_groups=groups)
    ids = chunk_ids or [chunk_id(doc_id, i) for i in range(len(texts))]
    chunks = [Chunk(id=c, document_id=doc_id, ordinal=i, text=t)
              for i, (c, t) in enumerate(zip(ids, texts, strict=True))]
    vectors = np.stack([near(f, dim=dim) for f in flips or range(len(texts))])
    return DocumentWrite(document, chunks, vectors)


def texts_of(hits: Sequence[Any]) -> list[str]:
    return [h.chunk.text for h in hits]


def sources_of(hits: Sequence[Any]) -> list[str]:
    return [h.source for h in hits]


class StoreConformance:
    """Tests every ``Store`` must pass; a subclass provides the ``store_factory`` fixture."""

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Store:
        return store_factory(f"conformance-{uuid.uuid4().hex[:10]}")

    @pytest.fixture
    def collection(self, store: Store) -> str:
        store.ensure_collection("docs", embed_model=MODEL, embed_dim=DIM)
        return "docs"

    @pytest.fixture
    def restricted(self, store: Store, collection: str) -> str:
        """The best match for :data:`QUERY` and for "payroll" is in a document only ``hr`` may read."""
        write(store, collection, "salaries.md", ["payroll bands and salary secrets"], flips=[0],
              groups=("hr",), metadata={"year": 2024, "dept": "hr"})
        write(store, collection, "handbook.md", [f"salary policy page {i}" for i in range(4)],
              flips=[1, 2, 3, 4], metadata={"year": 2020, "dept": "all"})
        return collection

    # --- collections ---

    def test_store_is_scoped_to_its_tenant(self, store_factory: StoreFactory) -> None:
        assert store_factory("acme").tenant == "acme"

    def test_ensure_collection_is_idempotent(self, store: Store, collection: str) -> None:
        store.ensure_collection(collection, embed_model=MODEL, embed_dim=DIM)
        assert store.collection_model(collection) == (MODEL, DIM)
        [stats] = store.stats()
        assert (stats.name, stats.embed_model, stats.embed_dim) == (collection, MODEL, DIM)
        assert (stats.documents, stats.chunks) == (0, 0)

    @pytest.mark.parametrize(("model", "dim"), [("another-model", DIM), (MODEL, DIM * 2)])
    def test_ensure_collection_refuses_another_model_or_dimension(
        self, store: Store, collection: str, model: str, dim: int
    ) -> None:
        with pytest.raises(ConfigError):
            store.ensure_collection(collection, embed_model=model, embed_dim=dim)
        assert store.collection_model(collection) == (MODEL, DIM)

    def test_create_collection_refuses_an_existing_name(self, store: Store) -> None:
        store.create_collection("new", embed_model=MODEL, embed_dim=DIM)
        assert [(s.name, s.documents, s.chunks) for s in store.stats()] == [("new", 0, 0)]
        with pytest.raises(ConflictError):
            store.create_collection("new", embed_model=MODEL, embed_dim=DIM)
        store.ensure_collection("new", embed_model=MODEL, embed_dim=DIM)

    def test_delete_collection_removes_everything_in_it(self, store: Store, collection: str) -> None:
        write(store, collection, "a.md", ["alpha"])
        store.delete_collection(collection)
        assert store.stats() == []
        with pytest.raises(NotFoundError):
            store.delete_collection(collection)
        with pytest.raises(NotFoundError):
            store.search_dense(collection=collection, query=QUERY, top_k=1)

    def test_stats_lists_collections_by_name_with_visible_counts(
        self, store: Store, restricted: str
    ) -> None:
        store.ensure_collection("another", embed_model=MODEL, embed_dim=DIM)
        assert [(s.name, s.documents, s.chunks) for s in store.stats()] == [
            ("another", 0, 0), (restricted, 2, 5)]
        for outsider in OUTSIDERS:
            counts = {s.name: (s.documents, s.chunks) for s in store.stats(where=outsider)}
            assert counts[restricted] == (1, 4)
        hr = store.stats(where=SearchFilter(groups=("hr",)))
        assert {s.name: s.chunks for s in hr}[restricted] == 5

    @pytest.mark.parametrize("call", [
        lambda s: s.collection_model("missing"),
        lambda s: s.search_dense(collection="missing", query=QUERY, top_k=1),
        lambda s: s.search_lexical(collection="missing", query="alpha", top_k=1),
        lambda s: s.fetch_hits(collection="missing", scores=[("x", 1.0)], stage="x"),
        lambda s: s.sample_chunks(collection="missing", limit=1),
        lambda s: s.index_bytes("missing"),
        lambda s: s.list_documents(collection="missing"),
        lambda s: write(s, "missing", "a.md", ["alpha"]),
        lambda s: s.write_documents(collection="missing",
                                    documents=[writing(s, "missing", "a.md", ["alpha"])]),
    ], ids=["collection_model", "search_dense", "search_lexical", "fetch_hits", "sample_chunks",
            "index_bytes", "list_documents", "write_document", "write_documents"])
    def test_a_missing_collection_is_not_found(self, store: Store,
                                               call: Callable[[Store], object]) -> None:
        with pytest.raises(NotFoundError):
            call(store)

    def test_lookups_in_a_missing_collection_find_nothing(self, store: Store) -> None:
        assert store.document_hash(collection="missing", source="a.md") is None
        assert store.document_hashes(collection="missing") == {}
        assert store.list_sources(collection="missing") == []
        assert store.delete_document(collection="missing", source="a.md") is False

    def test_other_tenants_see_nothing(self, store: Store, store_factory: StoreFactory,
                                       collection: str) -> None:
        doc_id = write(store, collection, "secret.md", ["alpha"])
        other = store_factory(f"{store.tenant}-other")
        assert other.stats() == []
        with pytest.raises(NotFoundError):
            other.search_dense(collection=collection, query=QUERY, top_k=1)
        with pytest.raises(NotFoundError):
            other.get_document(doc_id)
        assert other.delete_document_by_id(doc_id) is False
        assert store.get_document(doc_id).source == "secret.md"

    # --- documents ---

    def test_write_document_returns_its_stable_id_and_hash(self, store: Store,
                                                           collection: str) -> None:
        doc_id = write(store, collection, "a.md", ["alpha", "beta"])
        assert doc_id == document_id(collection=f"{store.tenant}/{collection}", source="a.md")
        assert store.document_hash(collection=collection, source="a.md") == "a.md@1"
        assert store.document_hash(collection=collection, source="b.md") is None
        assert store.document_hashes(collection=collection) == {"a.md": "a.md@1"}

    def test_write_document_replaces_the_old_version(self, store: Store, collection: str) -> None:
        write(store, collection, "a.md", ["alpha", "beta", "gamma"], flips=[0, 1, 2])
        write(store, collection, "a.md", ["delta"], flips=[3], version="2")
        assert texts_of(store.search_dense(collection=collection, query=QUERY, top_k=10)) == ["delta"]
        assert store.search_lexical(collection=collection, query="alpha", top_k=10) == []
        assert store.document_hash(collection=collection, source="a.md") == "a.md@2"
        [stats] = store.stats()
        assert (stats.documents, stats.chunks) == (1, 1)

    def test_write_document_is_idempotent(self, store: Store, collection: str) -> None:
        first = write(store, collection, "a.md", ["alpha", "beta"])
        before = store.search_dense(collection=collection, query=QUERY, top_k=10)
        assert write(store, collection, "a.md", ["alpha", "beta"]) == first
        assert store.search_dense(collection=collection, query=QUERY, top_k=10) == before
        [stats] = store.stats()
        assert (stats.documents, stats.chunks) == (1, 2)

    def test_a_failed_write_leaves_the_old_version(self, store: Store, collection: str) -> None:
        write(store, collection, "a.md", ["alpha", "beta"])
        with pytest.raises(StoreError):  # fails after the old chunks were replaced in its transaction
            write(store, collection, "a.md", ["gamma", "delta"], version="2", chunk_ids=["x", "x"])
        with pytest.raises(ConfigError):
            write(store, collection, "a.md", ["gamma"], version="3", dim=DIM * 2)
        with pytest.raises(ValueError):
            store.write_document(collection=collection, document=Document("a.md", "", (), "a.md@4"),
                                 chunks=[], embeddings=np.stack([QUERY]))
        assert store.document_hash(collection=collection, source="a.md") == "a.md@1"
        assert sorted(texts_of(store.search_dense(collection=collection, query=QUERY, top_k=10))) == [
            "alpha", "beta"]

    def test_write_documents_writes_each_and_reports_each(self, store: Store,
                                                          collection: str) -> None:
        batch = [writing(store, collection, f"{i}.md", [f"text {i}", f"more {i}"],
                         flips=[2 * i, 2 * i + 1]) for i in range(5)]
        results = store.write_documents(collection=collection, documents=batch)
        assert results == [document_id(collection=f"{store.tenant}/{collection}", source=f"{i}.md")
                           for i in range(5)]
        [stats] = store.stats()
        assert (stats.documents, stats.chunks) == (5, 10)
        assert texts_of(store.search_dense(collection=collection, query=QUERY, top_k=3)) == [
            "text 0", "more 0", "text 1"]
        assert texts_of(store.search_lexical(collection=collection, query="more 3", top_k=1)) == [
            "more 3"]
        assert store.write_documents(collection=collection, documents=[]) == []

    def test_write_documents_keeps_out_only_the_bad_documents(self, store: Store,
                                                              collection: str) -> None:
        write(store, collection, "dup.md", ["old dup"])
        batch = [writing(store, collection, "a.md", ["alpha"]),
                 writing(store, collection, "dup.md", ["gamma", "delta"], version="2",
                         chunk_ids=["x", "x"]),
                 writing(store, collection, "wide.md", ["wide"], dim=DIM * 2),
                 writing(store, collection, "b.md", ["beta"])]
        results = store.write_documents(collection=collection, documents=batch)
        assert isinstance(results[1], StoreError) and isinstance(results[2], ConfigError)
        assert [results[0], results[3]] == [
            document_id(collection=f"{store.tenant}/{collection}", source=s) for s in ["a.md", "b.md"]]
        assert store.document_hashes(collection=collection) == {
            "a.md": "a.md@1", "b.md": "b.md@1", "dup.md": "dup.md@1"}
        assert sorted(texts_of(store.search_dense(collection=collection, query=QUERY, top_k=10))
                      ) == ["alpha", "beta", "old dup"]

    def test_write_documents_is_idempotent_and_the_last_version_wins(
        self, store: Store, collection: str
    ) -> None:
        batch = [writing(store, collection, f"{i}.md", [f"text {i}"], flips=[i]) for i in range(3)]
        store.write_documents(collection=collection, documents=batch)
        before = store.search_dense(collection=collection, query=QUERY, top_k=10)
        store.write_documents(collection=collection, documents=batch)
        assert store.search_dense(collection=collection, query=QUERY, top_k=10) == before
        store.write_documents(collection=collection, documents=[
            writing(store, collection, "0.md", ["first"], version="2"),
            writing(store, collection, "0.md", ["second", "third"], version="3")])
        assert store.document_hash(collection=collection, source="0.md") == "0.md@3"
        [stats] = store.stats()
        assert (stats.documents, stats.chunks) == (3, 4)
        assert "first" not in texts_of(store.search_dense(collection=collection, query=QUERY,
                                                          top_k=10))

    def test_delete_document(self, store: Store, collection: str) -> None:
        write(store, collection, "a.md", ["alpha"], flips=[0])
        write(store, collection, "b.md", ["beta"], flips=[1])
        assert store.delete_document(collection=collection, source="a.md") is True
        assert store.delete_document(collection=collection, source="a.md") is False
        assert sources_of(store.search_dense(collection=collection, query=QUERY, top_k=10)) == ["b.md"]
        assert store.search_lexical(collection=collection, query="alpha", top_k=10) == []
        assert store.list_sources(collection=collection) == ["b.md"]

    def test_list_sources_is_sorted(self, store: Store, collection: str) -> None:
        for source in ["c.md", "a.md", "b/z.md"]:
            write(store, collection, source, ["text"])
        assert store.list_sources(collection=collection) == ["a.md", "b/z.md", "c.md"]

    def test_list_documents_pages_by_source_and_hides_what_where_hides(
        self, store: Store, restricted: str
    ) -> None:
        write(store, restricted, "agenda.md", ["agenda"], flips=[5])
        page, total = store.list_documents(collection=restricted, limit=2)
        assert ([d.source for d in page], total) == (["agenda.md", "handbook.md"], 3)
        page, total = store.list_documents(collection=restricted, limit=2, offset=2)
        assert ([d.source for d in page], total) == (["salaries.md"], 3)
        assert (page[0].acl_groups, page[0].chunk_count, page[0].collection) == (
            ("hr",), 1, restricted)
        assert page[0].metadata == {"year": 2024, "dept": "hr"}
        for outsider in OUTSIDERS:
            page, total = store.list_documents(collection=restricted, where=outsider)
            assert ([d.source for d in page], total) == (["agenda.md", "handbook.md"], 2)

    def test_get_and_delete_documents_by_id(self, store: Store, restricted: str) -> None:
        doc_id = document_id(collection=f"{store.tenant}/{restricted}", source="salaries.md")
        assert store.get_document(doc_id, where=SearchFilter(groups=("hr",))).source == "salaries.md"
        for outsider in OUTSIDERS:
            with pytest.raises(NotFoundError):
                store.get_document(doc_id, where=outsider)
        assert store.delete_document_by_id(doc_id) is True
        assert store.delete_document_by_id(doc_id) is False
        with pytest.raises(NotFoundError):
            store.get_document(doc_id)

    def test_chunk_context_gives_neighbours_in_order_only_to_who_may_read_them(
        self, store: Store, store_factory: StoreFactory, restricted: str
    ) -> None:
        handbook = document_id(collection=f"{store.tenant}/{restricted}", source="handbook.md")
        document, chunks = store.chunk_context(chunk_id(handbook, 1), window=1)
        assert document.source == "handbook.md"
        assert [(c.ordinal, c.text) for c in chunks] == [
            (0, "salary policy page 0"), (1, "salary policy page 1"), (2, "salary policy page 2")]
        _, edge = store.chunk_context(chunk_id(handbook, 3), window=2)
        assert [c.ordinal for c in edge] == [1, 2, 3]
        secret = chunk_id(document_id(collection=f"{store.tenant}/{restricted}",
                                      source="salaries.md"), 0)
        assert store.chunk_context(secret, window=0, where=SearchFilter(groups=("hr",)))[1]
        for outsider in OUTSIDERS:
            with pytest.raises(NotFoundError):
                store.chunk_context(secret, window=0, where=outsider)
        with pytest.raises(NotFoundError):
            store_factory("another-tenant").chunk_context(secret, window=0)
        with pytest.raises(NotFoundError):
            store.chunk_context("no-such-chunk", window=1)

    def test_list_chunks_pages_in_reading_order_only_for_who_may_read_them(
        self, store: Store, store_factory: StoreFactory, restricted: str
    ) -> None:
        handbook = document_id(collection=f"{store.tenant}/{restricted}", source="handbook.md")
        document, chunks = store.list_chunks(handbook, limit=2, offset=1)
        assert (document.source, document.chunk_count) == ("handbook.md", 4)
        assert [(c.id, c.ordinal, c.text) for c in chunks] == [
            (chunk_id(handbook, 1), 1, "salary policy page 1"),
            (chunk_id(handbook, 2), 2, "salary policy page 2")]
        assert store.list_chunks(handbook, offset=4)[1] == []
        secret = document_id(collection=f"{store.tenant}/{restricted}", source="salaries.md")
        assert len(store.list_chunks(secret, where=SearchFilter(groups=("hr",)))[1]) == 1
        for outsider in OUTSIDERS:
            with pytest.raises(NotFoundError):
                store.list_chunks(secret, where=outsider)
        with pytest.raises(NotFoundError):
            store_factory("another-tenant").list_chunks(handbook)
        with pytest.raises(NotFoundError):
            store.list_chunks("no-such-document")

    # --- search ---

    @pytest.mark.parametrize("mode", DENSE_MODES)
    def test_search_dense_ranks_best_first(self, store: Store, collection: str,
                                           mode: DenseMode) -> None:
        write(store, collection, "a.md", ["two", "zero", "five"], flips=[2, 0, 5])
        write(store, collection, "b.md", ["one", "three"], flips=[1, 3])
        hits = store.search_dense(collection=collection, query=QUERY, top_k=4, mode=mode)
        assert texts_of(hits) == ["zero", "one", "two", "three"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all(h.scores == {f"dense_{mode}": h.score} for h in hits)
        assert sources_of(hits) == ["a.md", "b.md", "a.md", "b.md"]

    def test_search_dense_defaults_to_exact_float_search(self, store: Store,
                                                         collection: str) -> None:
        write(store, collection, "a.md", ["one", "zero"], flips=[1, 0])
        hits = store.search_dense(collection=collection, query=QUERY, top_k=5)
        assert texts_of(hits) == ["zero", "one"]
        assert hits[1].scores == {"dense_float": pytest.approx(1 - 2 / DIM, abs=1e-3)}

    def test_search_dense_refuses_bad_queries(self, store: Store, collection: str) -> None:
        write(store, collection, "a.md", ["alpha"])
        with pytest.raises(ConfigError):
            store.search_dense(collection=collection, query=near(0, dim=DIM * 2), top_k=1)
        with pytest.raises(ValueError):
            store.search_dense(collection=collection, query=QUERY, top_k=1,
                               mode="hamming")  # type: ignore[arg-type]  # an unknown mode on purpose

    @pytest.mark.parametrize("mode", DENSE_MODES)
    def test_dense_search_never_shows_chunks_of_groups_the_caller_lacks(
        self, store: Store, restricted: str, mode: DenseMode
    ) -> None:
        def search(where: SearchFilter | None) -> list[str]:
            return sources_of(store.search_dense(collection=restricted, query=QUERY, top_k=10,
                                                 mode=mode, oversample=10, where=where))

        assert search(None)[0] == search(SearchFilter(groups=("hr", "x")))[0] == "salaries.md"
        for outsider in OUTSIDERS:
            assert search(outsider) == ["handbook.md"] * 4

    def test_lexical_search_never_shows_chunks_of_groups_the_caller_lacks(
        self, store: Store, restricted: str
    ) -> None:
        def search(where: SearchFilter | None) -> list[str]:
            return sources_of(store.search_lexical(collection=restricted, query="payroll salary",
                                                   top_k=10, where=where))

        assert search(None)[0] == search(SearchFilter(groups=("hr",)))[0] == "salaries.md"
        for outsider in OUTSIDERS:
            assert search(outsider) == ["handbook.md"] * 4

    @pytest.mark.parametrize(("conditions", "expected"), [
        ((MetadataCondition("dept", "eq", "all"),), {"handbook.md"}),
        ((MetadataCondition("dept", "in", ["hr", "x"]),), {"salaries.md"}),
        ((MetadataCondition("year", "gte", 2021),), {"salaries.md"}),
        ((MetadataCondition("year", "lt", 2021), MetadataCondition("dept", "eq", "all")),
         {"handbook.md"}),
        ((MetadataCondition("year", "gt", 3000),), set()),
        # Keys are data, never syntax: placeholder-like text in them matches nothing.
        ((MetadataCondition("50% off", "in", ["x"]),), set()),
        ((MetadataCondition("%(f_0)s é%", "gte", 1), MetadataCondition("%s", "lt", "z")), set()),
    ])
    def test_searches_keep_only_what_metadata_conditions_allow(
        self, store: Store, restricted: str, conditions: tuple[MetadataCondition, ...],
        expected: set[str]
    ) -> None:
        where = SearchFilter(conditions=conditions)
        dense = store.search_dense(collection=restricted, query=QUERY, top_k=10, where=where)
        lexical = store.search_lexical(collection=restricted, query="salary", top_k=10, where=where)
        assert set(sources_of(dense)) == expected == set(sources_of(lexical))

    def test_malformed_conditions_are_value_errors(self, store: Store, restricted: str) -> None:
        where = SearchFilter(conditions=(MetadataCondition("dept", "in", []),))
        with pytest.raises(ValueError):
            store.search_dense(collection=restricted, query=QUERY, top_k=1, where=where)
        with pytest.raises(ValueError):
            store.search_lexical(collection=restricted, query="salary", top_k=1, where=where)

    def test_search_lexical_ranks_by_bm25(self, store: Store, collection: str) -> None:
        write(store, collection, "zoo.md", ["the cat sat on the mat", "dogs chase cats outside",
                                            "quantum chromodynamics", "cats cats cats everywhere"])
        hits = store.search_lexical(collection=collection, query="Cats!", top_k=10)
        assert texts_of(hits)[0] == "cats cats cats everywhere"
        assert set(texts_of(hits)) == {"the cat sat on the mat", "dogs chase cats outside",
                                    "cats cats cats everywhere"}
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all(h.scores == {"bm25": h.score} and h.score > 0 for h in hits)
        assert len(store.search_lexical(collection=collection, query="cats", top_k=2)) == 2
        assert store.search_lexical(collection=collection, query="the of and", top_k=5) == []

    def test_fetch_hits_keeps_the_order_given_and_skips_unknown_ids(
        self, store: Store, collection: str
    ) -> None:
        doc_id = write(store, collection, "a.md", ["alpha", "beta"])
        hits = store.fetch_hits(collection=collection, stage="outside",
                                scores=[(chunk_id(doc_id, 1), 0.7), ("gone", 0.5),
                                        (chunk_id(doc_id, 0), 0.2)])
        assert [(h.chunk.text, h.score, h.scores, h.source) for h in hits] == [
            ("beta", 0.7, {"outside": 0.7}, "a.md"), ("alpha", 0.2, {"outside": 0.2}, "a.md")]

    def test_widen_joins_neighbours_of_the_same_document(self, store: Store,
                                                         collection: str) -> None:
        write(store, collection, "a.md", ["a0", "a1", "a2", "a3"], flips=[4, 5, 0, 6])
        write(store, collection, "b.md", ["b0", "b1"], flips=[1, 7])
        hits = store.search_dense(collection=collection, query=QUERY, top_k=2)
        wide = store.widen(hits, window=1)
        assert texts_of(wide) == ["a1\na2\na3", "b0\nb1"]
        assert [(h.chunk.id, h.score, h.scores) for h in wide] == [
            (h.chunk.id, h.score, h.scores) for h in hits]
        assert store.widen(hits, window=0) == hits
        assert store.widen([], window=2) == []

    def test_sample_chunks_is_fixed_by_its_seed(self, store: Store, collection: str) -> None:
        write(store, collection, "a.md", [f"chunk {i}" for i in range(12)])
        sample = store.sample_chunks(collection=collection, limit=5, seed="s")
        assert len(sample) == 5 and all(h.score == 0 for h in sample)
        assert store.sample_chunks(collection=collection, limit=5, seed="s") == sample
        every = store.sample_chunks(collection=collection, limit=100, seed="t")
        assert sorted(texts_of(every)) == sorted(f"chunk {i}" for i in range(12))

    def test_index_bytes_reports_every_part(self, store: Store, collection: str) -> None:
        write(store, collection, "a.md", ["alpha beta", "gamma delta"])
        sizes = store.index_bytes(collection)
        assert set(sizes) == {"halfvec", "bit_codes", "bit_hnsw", "bm25_postings", "bm25_index",
                              "chunks"}
        assert sizes["chunks"] == 2 and sizes["halfvec"] >= 2 * DIM * 2
