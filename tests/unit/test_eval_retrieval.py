"""eval/retrieval.py and eval/report.py over a deterministic in-memory store (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.types import Chunk, ScoredChunk
from eval.datasets import load_beir
from eval.report import git_commit, provenance, render_markdown, write_reports
from eval.retrieval import best_chunk_per_document, check_setup, evaluate_retrieval, parse_modes
from tests.helpers import write_beir

pytestmark = pytest.mark.unit

VOCAB = ["cat", "dog", "fish", "bird"]


class WordEmbedder:
    """Bag of known words, L2-normalised: deterministic and easy to reason about."""

    name = "word-counts"

    def embed_query(self, text: str) -> np.ndarray:
        vector = np.array([text.lower().count(w) for w in VOCAB], dtype=np.float32) + 1e-3
        return vector / np.linalg.norm(vector)


class ListStore:
    """Exact cosine search over a few chunks; records the calls it gets."""

    def __init__(self, chunks: list[tuple[str, str]]) -> None:
        embedder = WordEmbedder()
        self.chunks = [(source, text, embedder.embed_query(text)) for source, text in chunks]
        self.calls: list[tuple[str, int, int]] = []

    def search_dense(self, *, collection: str, query: np.ndarray, top_k: int, mode: str = "float",
                     oversample: int = 10) -> list[ScoredChunk]:
        self.calls.append((mode, top_k, oversample))
        scored = sorted(((float(vec @ query), source, text) for source, text, vec in self.chunks),
                        reverse=True)[:top_k]
        return [ScoredChunk(chunk=Chunk(id=f"{s}-{i}", document_id=s, ordinal=i, text=t),
                            score=score, source=s) for i, (score, s, t) in enumerate(scored)]


@pytest.fixture
def store() -> ListStore:
    return ListStore([("d1", "cat cat"), ("d1", "fish"), ("d2", "dog"), ("d3", "bird dog")])


QUERIES = {"q1": "cat", "q2": "dog", "q3": "fish"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}, "q3": {"d1": 1}}


def test_every_mode_is_run_and_scored(store: ListStore) -> None:
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


def test_a_document_scores_as_its_best_chunk() -> None:
    hits = [ScoredChunk(chunk=Chunk(id=str(i), document_id=s, ordinal=i, text=""), score=v, source=s)
            for i, (s, v) in enumerate([("a", 0.2), ("b", 0.5), ("a", 0.9), ("a", 0.1)])]
    assert best_chunk_per_document(hits) == {"a": 0.9, "b": 0.5}


@pytest.mark.parametrize(("modes", "depth", "oversample", "needle"), [
    (["dense-bm25"], 10, 1, "modes must be"),
    (["dense-float32", "dense-float32"], 10, 1, "modes must be"),
    (["dense-binary-rescore"], 250, 5, "hnsw.ef_search"),
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


def test_reports_carry_provenance_and_label_published_numbers(store: ListStore, tmp_path: Path) -> None:
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


def test_other_datasets_get_no_published_reference(store: ListStore, tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "tiny"))
    result = evaluate_retrieval(store=store, embedder=WordEmbedder(), queries=QUERIES, qrels=QRELS,
                                collection="c", modes=["dense-float32"], depth=5)
    markdown = render_markdown(result, provenance(data))
    assert "None on file for this dataset." in markdown and "0.665" not in markdown
    assert "Differences" not in markdown
