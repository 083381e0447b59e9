"""eval/retrieval.py and eval/report.py over a deterministic in-memory store (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.datasets import load_beir
from eval.report import git_commit, provenance, render_markdown, write_reports
from eval.retrieval import (
    MODES,
    RerankSetup,
    best_chunk_per_document,
    check_setup,
    document_scores,
    evaluate_retrieval,
    mode_index_bytes,
    parse_modes,
)
from tests.fakes import LastWordReranker, MemoryStore, WordEmbedder, word_store
from tests.helpers import write_beir
from verity.core.settings import RetrievalSettings
from verity.core.types import Chunk, ScoredChunk

pytestmark = pytest.mark.unit


@pytest.fixture
def store() -> MemoryStore:
    return word_store([("d1", "cat cat"), ("d1", "fish"), ("d2", "dog"), ("d3", "bird dog")])


QUERIES = {"q1": "cat", "q2": "dog", "q3": "fish"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}, "q3": {"d1": 1}}


def test_every_mode_is_run_and_scored(store: MemoryStore) -> None:
    result = evaluate_retrieval(store=store, embedder=WordEmbedder(), queries=QUERIES, qrels=QRELS,
                                collection="c", modes=["dense-float32", "dense-binary-rescore"],
                                depth=10, oversample=3)
    assert [m.mode for m in result.modes] == ["dense-float32", "dense-binary-rescore"]
    # one untimed warm-up call per mode, then one call per query
    assert store.calls == [("float", 10, 3)] * 4 + [("binary-rescore", 10, 3)] * 4
    for mode in result.modes:
        assert mode.metrics["mrr@10"] == 1.0 and mode.metrics["recall@10"] == 1.0
        assert set(mode.search_ms) == set(QRELS) and mode.p95_ms >= mode.p50_ms >= 0
        assert mode.docs_per_query == 3.0  # four chunks, three documents
    assert result.queries == 3 and result.model == "word-counts"


def test_all_seven_modes_run_with_their_backends(store: MemoryStore) -> None:
    def int8(query: np.ndarray, *, top_k: int, oversample: int) -> list[ScoredChunk]:
        # stands in for the FAISS int8 index: exact search, as int8 codes nearly are
        return store.search_dense(collection="c", query=query, top_k=top_k, mode="float",
                                  oversample=oversample)

    sizes = mode_index_bytes(MODES, store=store, collection="c", int8_bytes={"int8_codes": 16},
                             reranker_bytes=1000)
    result = evaluate_retrieval(store=store, embedder=WordEmbedder(), queries=QUERIES, qrels=QRELS,
                                collection="c", modes=list(MODES), depth=10, oversample=3,
                                rerank=RerankSetup(reranker=LastWordReranker("d3"), top_n=2),
                                int8=int8, index_bytes=sizes)
    by_mode = {m.mode: m for m in result.modes}
    assert list(by_mode) == list(MODES)
    for mode in result.modes:
        assert set(mode.search_ms) == set(QRELS) and 0.0 <= mode.metrics["ndcg@10"] <= 1.0
    assert by_mode["dense-float32"].metrics["mrr@10"] == 1.0
    assert by_mode["bm25"].docs_per_query == 4 / 3  # only documents holding the word: dog is in two
    # the reranker puts its favourite d3 first among the top 2, and the third stays third
    assert by_mode["hybrid+rerank"].per_query["mrr@10"]["q1"] == 0.5
    assert by_mode["hybrid+rerank"].docs_per_query == by_mode["hybrid"].docs_per_query
    assert by_mode["hybrid"].index_bytes == {"bm25_postings": 50, "bm25_index": 20, "halfvec": 100}
    assert by_mode["hybrid+rerank"].index_total_bytes == 1170
    assert by_mode["dense-binary-rescore"].index_bytes == {"bit_hnsw": 30, "halfvec": 100}
    assert result.settings["rerank"] == {"reranker": "last-word", "top_n": 2, "fusion": "replace",
                                         "weight": 0.5}
    assert result.settings["retrieval"]["fusion"] == "rrf"


def test_interpolating_with_weight_zero_keeps_the_first_stage_order(store: MemoryStore) -> None:
    def run(fusion: str, weight: float) -> dict[str, dict[str, float]]:
        rerank = RerankSetup(reranker=LastWordReranker("d3"), top_n=3, fusion=fusion, weight=weight)
        result = evaluate_retrieval(store=store, embedder=WordEmbedder(), queries=QUERIES,
                                    qrels=QRELS, collection="c", modes=["hybrid", "hybrid+rerank"],
                                    depth=10, rerank=rerank,
                                    retrieval=RetrievalSettings(fusion="weighted"))
        return {m.mode: m.per_query["ndcg@10"] for m in result.modes}

    kept = run("interpolate", 0.0)
    assert kept["hybrid+rerank"] == kept["hybrid"]
    assert run("interpolate", 1.0)["hybrid+rerank"] == run("replace", 0.5)["hybrid+rerank"]
    assert run("replace", 0.5)["hybrid+rerank"]["q1"] < 1.0 == kept["hybrid"]["q1"]


def test_modes_without_their_backend_are_refused(store: MemoryStore) -> None:
    for mode, needle in [("hybrid+rerank", "reranker"), ("dense-int8", "int8")]:
        with pytest.raises(ValueError, match=needle):
            evaluate_retrieval(store=store, embedder=WordEmbedder(), queries=QUERIES, qrels=QRELS,
                               collection="c", modes=[mode], depth=10)


def test_documents_rank_in_the_order_of_their_best_chunk() -> None:
    hits = [ScoredChunk(chunk=Chunk(id=str(i), document_id=s, ordinal=i, text=""), score=v, source=s)
            for i, (s, v) in enumerate([("a", 0.2), ("b", 0.5), ("a", 0.9), ("c", 0.1)])]
    assert document_scores(hits) == {"a": 1.0, "b": 0.5, "c": 1 / 3}


def test_a_document_scores_as_its_best_chunk() -> None:
    hits = [ScoredChunk(chunk=Chunk(id=str(i), document_id=s, ordinal=i, text=""), score=v, source=s)
            for i, (s, v) in enumerate([("a", 0.2), ("b", 0.5), ("a", 0.9), ("a", 0.1)])]
    assert best_chunk_per_document(hits) == {"a": 0.9, "b": 0.5}


@pytest.mark.parametrize(("modes", "depth", "oversample", "needle"), [
    (["dense-bm25"], 10, 1, "modes must be"),
    (["dense-float32", "dense-float32"], 10, 1, "modes must be"),
    (["dense-binary-rescore"], 250, 5, "hnsw.ef_search"),
    (["dense-binary"], 1001, 1, "hnsw.ef_search"),
    (["dense-float32"], 0, 1, "positive"),
])
def test_setups_the_store_cannot_run_are_refused(modes: list[str], depth: int, oversample: int,
                                                  needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        check_setup(modes, depth=depth, oversample=oversample)


def test_float_mode_has_no_candidate_limit() -> None:
    check_setup(["dense-float32"], depth=2000, oversample=10)
    assert parse_modes(" dense-float32 ,dense-binary-rescore") == ["dense-float32",
                                                                    "dense-binary-rescore"]
    assert parse_modes("all") == list(MODES) and len(MODES) == 7


def test_reports_carry_provenance_and_label_published_numbers(store: MemoryStore, tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "scifact"))
    result = evaluate_retrieval(store=store, embedder=WordEmbedder(), queries=QUERIES, qrels=QRELS,
                                collection="c", modes=["dense-float32", "dense-binary-rescore"],
                                depth=10, oversample=3)
    info = provenance(data, command="verity eval retrieval ...")
    md_path, json_path = write_reports(result, info, tmp_path / "out")
    markdown = md_path.read_text()
    for needle in [data.sha256, "dense-float32", "dense-binary-rescore", "word-counts",
                   "BM25 (BEIR) on scifact: ndcg@10 = 0.665 (published", "not measured",
                   "verity eval retrieval ...", "faithfulness_judge `"]:
        assert needle in markdown
    report = json.loads(json_path.read_text())
    assert report["provenance"]["dataset_sha256"] == data.sha256
    assert report["provenance"]["git_commit"] == git_commit()
    assert report["published_references"][0] == {
        "system": "BM25 (BEIR)", "metric": "ndcg@10", "value": 0.665,
        "source": "Thakur et al. 2021, BEIR, Tables 2 and 9", "measured": False}
    assert all(not r["measured"] for r in report["published_references"])
    assert "*BM25 (BEIR), published* | *0.665*" in markdown  # beside ours, in the table
    assert report["modes"][0]["per_query"]["ndcg@10"].keys() == QRELS.keys()
    assert {r["metric"] for r in report["comparisons"]} == {"ndcg@10", "recall@10", "recall@100",
                                                            "mrr@10"}


def test_other_datasets_get_no_published_reference(store: MemoryStore, tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "tiny"))
    result = evaluate_retrieval(store=store, embedder=WordEmbedder(), queries=QUERIES, qrels=QRELS,
                                collection="c", modes=["dense-float32"], depth=5)
    markdown = render_markdown(result, provenance(data))
    assert "None on file for this dataset." in markdown and "0.665" not in markdown
    assert "Differences" not in markdown
