import math
import time
from dataclasses import replace
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest

from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_sql import binary_index_name
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.backends.stores.pgvector_write import lexical_text
from verity.core.errors import ConfigError, NotFoundError
from verity.core.lexical import term_frequencies
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

pytestmark = pytest.mark.integration

DIM = 16


def _doc(source: str, texts: list[str], store: PgvectorStore, collection: str,
         rng: np.random.Generator) -> tuple[Document, list[Chunk], np.ndarray]:
    doc = Document(source=source, title=source, content_hash=f"h-{source}-{len(texts)}",
                   sections=tuple(Section(t) for t in texts))
    did = document_id(collection=f"{store.tenant}/{collection}", source=source)
    chunks = [Chunk(id=chunk_id(did, i), document_id=did, ordinal=i, text=t)
              for i, t in enumerate(texts)]
    vectors = rng.normal(size=(len(texts), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return doc, chunks, vectors


def test_write_search_replace_delete(store: PgvectorStore, collection: str) -> None:
    rng = np.random.default_rng(0)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    doc, chunks, vectors = _doc("a.md", ["alpha", "beta", "gamma"], store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)

    hits = store.search_dense(collection=collection, query=vectors[1], top_k=2)
    assert hits[0].chunk.text == "beta" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].source == "a.md"
    assert store.document_hash(collection=collection, source="a.md") == doc.content_hash

    doc2, chunks2, vectors2 = _doc("a.md", ["delta"], store, collection, rng)
    store.write_document(collection=collection, document=doc2, chunks=chunks2, embeddings=vectors2)
    texts = {h.chunk.text for h in store.search_dense(collection=collection, query=vectors2[0],
                                                      top_k=10)}
    assert texts == {"delta"}
    [stats] = [s for s in store.stats() if s.name == collection]
    assert (stats.documents, stats.chunks) == (1, 1)

    assert store.delete_document(collection=collection, source="a.md")
    assert not store.delete_document(collection=collection, source="a.md")
    assert store.search_dense(collection=collection, query=vectors2[0], top_k=5) == []


def test_binary_rescore_agrees_with_float_search(store: PgvectorStore, collection: str) -> None:
    rng = np.random.default_rng(1)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    texts = [f"chunk {i}" for i in range(200)]
    doc, chunks, vectors = _doc("many.md", texts, store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    for q in vectors[:10]:
        exact = store.search_dense(collection=collection, query=q, top_k=5)
        binary = store.search_dense(collection=collection, query=q, top_k=5,
                                    mode="binary-rescore", oversample=40)
        assert binary[0].chunk.id == exact[0].chunk.id
        assert len({h.chunk.id for h in binary} & {h.chunk.id for h in exact}) >= 4
        hamming = store.search_dense(collection=collection, query=q, top_k=5, mode="binary")
        assert hamming[0].chunk.id == exact[0].chunk.id and hamming[0].score == 1.0
        assert [h.score for h in hamming] == sorted((h.score for h in hamming), reverse=True)


def test_fetch_hits_and_index_bytes(store: PgvectorStore, collection: str) -> None:
    rng = np.random.default_rng(2)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    doc, chunks, vectors = _doc("sized.md", ["alpha beta", "gamma delta"], store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    hits = store.fetch_hits(collection=collection, scores=[(chunks[1].id, 0.7), ("gone", 0.5),
                                                           (chunks[0].id, 0.2)], stage="x")
    assert [(h.chunk.text, h.score, h.scores, h.source) for h in hits] == [
        ("gamma delta", 0.7, {"x": 0.7}, "sized.md"), ("alpha beta", 0.2, {"x": 0.2}, "sized.md")]
    sizes = store.index_bytes(collection)
    assert sizes["chunks"] == 2 and sizes["halfvec"] >= 2 * DIM * 2
    assert sizes["bit_codes"] >= 2 * DIM // 8 and sizes["bit_hnsw"] > 0
    assert sizes["bm25_postings"] > 0 and sizes["bm25_index"] >= 0


def test_collection_remembers_its_model(store: PgvectorStore, collection: str) -> None:
    store.ensure_collection(collection, embed_model="m1", embed_dim=DIM)
    with pytest.raises(ConfigError, match="m1"):
        store.ensure_collection(collection, embed_model="m2", embed_dim=DIM)
    with pytest.raises(ConfigError, match="-d"):
        store.search_dense(collection=collection, query=np.ones(DIM + 1, np.float32), top_k=1)


def test_unknown_collection_is_not_found(store: PgvectorStore) -> None:
    with pytest.raises(NotFoundError):
        store.search_dense(collection="never-made", query=np.ones(DIM, np.float32), top_k=1)


def test_tenants_do_not_see_each_other(store: PgvectorStore, database: Database, collection: str) -> None:
    rng = np.random.default_rng(2)
    other = PgvectorStore(database, tenant="other")
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    doc, chunks, vectors = _doc("secret.md", ["s"], store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    with pytest.raises(NotFoundError):
        other.search_dense(collection=collection, query=vectors[0], top_k=1)
    assert collection not in {s.name for s in other.stats()}


def test_bm25_ranks_by_term_rarity_and_frequency(store: PgvectorStore, collection: str) -> None:
    rng = np.random.default_rng(3)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    texts = ["the cat sat on the mat", "dogs chase cats in the park", "quantum chromodynamics",
             "cats cats cats everywhere", "a report on the weather"]
    doc, chunks, vectors = _doc("zoo.md", texts, store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    hits = store.search_lexical(collection=collection, query="Cats!", top_k=10)
    assert [h.chunk.text for h in hits][0] == "cats cats cats everywhere"
    assert {h.chunk.text for h in hits} == {texts[0], texts[1], texts[3]}
    assert hits[0].scores["bm25"] > hits[-1].scores["bm25"] > 0
    top = store.search_lexical(collection=collection, query="chromodynamics of quanta", top_k=1)
    assert top[0].chunk.text == "quantum chromodynamics"
    assert store.search_lexical(collection=collection, query="the of and", top_k=5) == []
    store.delete_document(collection=collection, source="zoo.md")
    assert store.search_lexical(collection=collection, query="cats", top_k=5) == []


def _reference_bm25(texts: list[str], query: str, *, k1: float, b: float) -> dict[str, float]:
    """Okapi BM25 with Lucene's idf over ``texts``, written out in Python: text -> score."""
    docs = [term_frequencies(lexical_text(Chunk(id="", document_id="", ordinal=0, text=t),
                                          title="ref.md")) for t in texts]
    n, avgdl = len(docs), sum(sum(d.values()) for d in docs) / len(docs)
    scores: dict[str, float] = {}
    for text, tf in zip(texts, docs, strict=True):
        length, score = sum(tf.values()), 0.0
        for term, qtf in term_frequencies(query).items():
            df = sum(term in d for d in docs)
            if term in tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += qtf * idf * tf[term] * (k1 + 1) / (
                    tf[term] + k1 * (1 - b + b * length / avgdl))
        if score > 0:
            scores[text] = score
    return scores


def test_bm25_scores_equal_a_reference_implementation(store: PgvectorStore,
                                                      collection: str) -> None:
    rng = np.random.default_rng(5)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    texts = ["cats and dogs and cats", "a dog barks at the postman", "cats sleep all day long",
             "the weather report for today", "dogs dogs dogs", "quantum cats in boxes of cats"]
    doc, chunks, vectors = _doc("ref.md", texts, store, collection, rng)
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    for query in ("cats dogs", "dog barking postman", "cats cats weather"):
        expected = _reference_bm25(texts, query, k1=1.2, b=0.6)
        hits = store.search_lexical(collection=collection, query=query, top_k=10, k1=1.2, b=0.6)
        assert {h.chunk.text: h.scores["bm25"] for h in hits} == pytest.approx(expected)
        assert [h.scores["bm25"] for h in hits] == sorted(expected.values(), reverse=True)


def _write(store: PgvectorStore, collection: str, source: str, texts: list[str],
           vectors: np.ndarray, *, groups: tuple[str, ...] = (),
           metadata: dict[str, object] | None = None) -> None:
    did = document_id(collection=f"{store.tenant}/{collection}", source=source)
    doc = Document(source=source, title=source, content_hash=f"h-{source}",
                   sections=tuple(Section(t) for t in texts), acl_groups=groups,
                   metadata=metadata or {})
    chunks = [Chunk(id=chunk_id(did, i), document_id=did, ordinal=i, text=t)
              for i, t in enumerate(texts)]
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)


@pytest.fixture
def restricted(store: PgvectorStore, collection: str) -> tuple[str, np.ndarray]:
    """A collection where the best match for every query is in an HR-only document."""
    rng = np.random.default_rng(4)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    secret = rng.normal(size=(1, DIM)).astype(np.float32)
    secret /= np.linalg.norm(secret)
    public = rng.normal(size=(30, DIM)).astype(np.float32)
    public /= np.linalg.norm(public, axis=1, keepdims=True)
    _write(store, collection, "salaries.md", ["salary bands salary secret payroll"], secret,
           groups=("hr",), metadata={"year": 2024, "dept": "hr"})
    _write(store, collection, "handbook.md", [f"salary policy public page {i}" for i in range(30)],
           public, metadata={"year": 2020, "dept": "all"})
    return collection, secret[0]


@pytest.mark.parametrize(("mode", "exact_scan_chunks"), [
    ("float", 0), ("binary", 0), ("binary-rescore", 0), ("binary-rescore", 1000), ("bm25", 0)])
def test_acl_restricted_chunks_never_reach_outsiders(
    store: PgvectorStore, restricted: tuple[str, np.ndarray], mode: DenseMode | Literal["bm25"],
    exact_scan_chunks: int,
) -> None:
    """binary-rescore takes the HNSW index (0) or, with few chunks visible, the exact scan."""
    collection, secret_vector = restricted
    store.exact_scan_chunks = exact_scan_chunks

    def search(where: SearchFilter | None) -> list[str]:
        if mode == "bm25":
            hits = store.search_lexical(collection=collection, query="salary payroll", top_k=50,
                                        where=where)
        else:
            hits = store.search_dense(collection=collection, query=secret_vector, top_k=50,
                                      mode=mode, oversample=10, where=where)
        return [h.source for h in hits]

    assert search(SearchFilter(groups=("hr",)))[0] == "salaries.md"
    assert search(None)[0] == "salaries.md"
    for outsider in [SearchFilter(groups=()), SearchFilter(groups=("engineering",))]:
        seen = search(outsider)
        assert seen and "salaries.md" not in seen


def test_bm25_statistics_ignore_invisible_chunks(
    store: PgvectorStore, restricted: tuple[str, np.ndarray]
) -> None:
    collection, _ = restricted
    inside = store.search_lexical(collection=collection, query="salary", top_k=1,
                                  where=SearchFilter(groups=("hr",)))
    outside = store.search_lexical(collection=collection, query="salary", top_k=1,
                                   where=SearchFilter(groups=()))
    # 'salary' occurs in 31 visible chunks for HR but 30 for outsiders: idf differs.
    assert inside[0].source == "salaries.md" and outside[0].source == "handbook.md"
    same_chunk = store.search_lexical(collection=collection, query="salary policy public page 3",
                                      top_k=1, where=SearchFilter(groups=("hr",)))
    assert same_chunk[0].score != pytest.approx(outside[0].score)


def test_bad_filters_are_value_errors(store: PgvectorStore, restricted: tuple[str, np.ndarray]) -> None:
    collection, vector = restricted
    for cond in [MetadataCondition("dept", "in", []), MetadataCondition("year", "gt", [1])]:
        with pytest.raises(ValueError):
            store.search_dense(collection=collection, query=vector, top_k=5,
                               where=SearchFilter(conditions=(cond,)))


@pytest.mark.parametrize("where", [
    SearchFilter(groups=("hr",)),
    SearchFilter(conditions=(MetadataCondition("dept", "eq", "hr"),)),
], ids=["acl", "metadata"])
def test_binary_rescore_fills_top_k_through_a_selective_filter(
    store: PgvectorStore, database: Database, collection: str, where: SearchFilter
) -> None:
    """1% of the chunks are visible, and all of them are farther than the invisible ones.

    The first ``top_k x oversample`` codes the HNSW graph yields are all invisible, so
    the index scan must keep walking until it has found enough visible ones.
    """
    dim = 64
    rng = np.random.default_rng(5)

    def unit(vectors: np.ndarray) -> npt.NDArray[np.float32]:
        normed: npt.NDArray[np.float32] = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
                                           ).astype(np.float32)
        return normed

    query = np.full(dim, 1 / np.sqrt(dim), dtype=np.float32)
    store.ensure_collection(collection, embed_model="test", embed_dim=dim)
    for d in range(20):  # 1980 invisible chunks in random directions
        _write(store, collection, f"eng-{d}.md", [f"eng {d}.{i}" for i in range(99)],
               unit(rng.normal(size=(99, dim))), groups=("eng",), metadata={"dept": "eng"})
    # 20 visible one-chunk documents, pointing away from the query.
    far = unit(rng.normal(size=(20, dim)) / np.sqrt(dim) - 2 * query)
    for j in range(20):
        _write(store, collection, f"hr-{j}.md", [f"hr {j}"], far[j:j + 1], groups=("hr",),
               metadata={"dept": "hr"})
    # Half the documents are visible, so the planner expects half the chunks to be and
    # walks the HNSW index rather than filtering first.
    with database.pool.connection() as conn:
        conn.execute("ANALYZE chunks, documents")

    exact = store.search_dense(collection=collection, query=query, top_k=5, where=where)
    store.exact_scan_chunks = 0  # the HNSW index's iterative scan, not the exact path
    rescored = store.search_dense(collection=collection, query=query, top_k=5,
                                  mode="binary-rescore", where=where)
    assert len(exact) == 5 and all(h.chunk.text.startswith("hr ") for h in exact)
    assert [h.chunk.text for h in rescored] == [h.chunk.text for h in exact]


def test_binary_rescore_scans_exactly_when_a_filter_leaves_few_chunks(
    store: PgvectorStore, database: Database, collection: str
) -> None:
    """Below ``exact_scan_chunks`` visible chunks (the planner's estimate) the HNSW index is
    not searched at all: its scan count, in PostgreSQL's statistics, shows which path ran."""
    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(6000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    # Half the documents are hr's, so the planner walks the index for hr unless told not to
    # (6,000 chunks: with fewer, sorting them all looks cheaper to it than the graph walk).
    for d in range(20):
        _write(store, collection, f"eng-{d}.md", [f"eng {d}.{i}" for i in range(299)],
               vectors[d * 299:(d + 1) * 299], groups=("eng",))
        _write(store, collection, f"hr-{d}.md", [f"hr {d}"], vectors[5980 + d:5981 + d],
               groups=("hr",))
    with database.pool.connection() as conn:
        conn.execute("ANALYZE chunks, documents")
        index = binary_index_name(store._collection(conn, collection)[0])

    def index_scans(at_least: int) -> int:
        """The index's scan count once it reaches ``at_least`` (statistics lag by about 1 s)."""
        deadline = time.monotonic() + 10
        while True:
            with database.pool.connection() as conn:
                conn.execute("SELECT pg_stat_clear_snapshot()")
                row = conn.execute("SELECT idx_scan FROM pg_stat_user_indexes "
                                   "WHERE indexrelname = %s", [index]).fetchone()
            scans = int(row[0]) if row else 0
            if scans >= at_least or time.monotonic() > deadline:
                return scans
            time.sleep(0.2)

    hr = SearchFilter(groups=("hr",))
    exact = store.search_dense(collection=collection, query=vectors[5985], top_k=3, where=hr)
    before = index_scans(0)
    for threshold in [5000, 5000, 0]:  # two exact scans, then one through the index
        store.exact_scan_chunks = threshold
        hits = store.search_dense(collection=collection, query=vectors[5985], top_k=3,
                                  mode="binary-rescore", where=hr)
        assert hits == [replace(h, scores={"dense_binary-rescore": h.score}) for h in exact]
    assert index_scans(before + 1) == before + 1
    time.sleep(1.5)  # a scan by the two exact searches would be counted by now
    assert index_scans(0) == before + 1


def test_bulk_load_builds_an_empty_collections_index_after_the_writes(
    store: PgvectorStore, database: Database, collection: str
) -> None:
    rng = np.random.default_rng(7)
    store.ensure_collection(collection, embed_model="test", embed_dim=DIM)
    with database.pool.connection() as conn:
        index = binary_index_name(store._collection(conn, collection)[0])

    def indexed() -> bool:
        with database.pool.connection() as conn:
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [index]).fetchone() == (True,)

    doc, chunks, vectors = _doc("a.md", ["alpha", "beta"], store, collection, rng)
    with store.bulk_load(collection):
        assert not indexed()
        store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
        hits = store.search_dense(collection=collection, query=vectors[1], top_k=1,
                                  mode="binary-rescore")
        assert hits[0].chunk.text == "beta"  # found without the index too
    assert indexed()
    with store.bulk_load(collection):  # not empty: the index stays
        assert indexed()
    store.delete_document(collection=collection, source="a.md")
    with pytest.raises(RuntimeError, match="failed"), store.bulk_load(collection):
        assert not indexed()
        raise RuntimeError("a write failed")
    assert indexed()
    with pytest.raises(NotFoundError), store.bulk_load("missing"):
        pass
