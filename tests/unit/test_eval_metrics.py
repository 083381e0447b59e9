"""eval/metrics.py against pytrec_eval (trec_eval's own C code) and by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytrec_eval

from eval.metrics import (
    Metric,
    average_precision,
    contains_answer,
    evaluate,
    exact_match,
    mean,
    ndcg_at_k,
    paired_bootstrap,
    rank,
    reciprocal_rank,
    token_f1,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]
Measures = dict[str, dict[str, float]]  # pytrec_eval: {qid: {measure: value}}
CUTOFFS = (1, 3, 5, 10, 20, 100)


def _read_run(path: Path) -> Run:
    run: Run = {}
    for line in path.read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    return run


def _read_qrels(path: Path) -> Qrels:
    qrels: Qrels = {}
    for line in path.read_text().splitlines():
        qid, _, doc, grade = line.split()
        qrels.setdefault(qid, {})[doc] = int(grade)
    return qrels


@pytest.fixture(scope="module")
def run() -> Run:
    return _read_run(DATA / "metrics_run.txt")


@pytest.fixture(scope="module")
def qrels() -> Qrels:
    return _read_qrels(DATA / "metrics_qrels.txt")


@pytest.fixture(scope="module")
def reference(run: Run, qrels: Qrels) -> Measures:
    cut = ",".join(map(str, CUTOFFS))
    measures = {f"ndcg_cut.{cut}", f"recall.{cut}", f"P.{cut}", f"map_cut.{cut}", "map", "recip_rank"}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


def test_fixture_has_ties_graded_and_edge_cases(run: Run,
                                                qrels: Qrels) -> None:
    assert {g for judged in qrels.values() for g in judged.values()} >= {-1, 0, 1, 2, 3}
    assert any(len(set(scores.values())) < len(scores) for scores in run.values())
    assert "t4" in qrels and "t4" not in run and "t5" in run and "t5" not in qrels


@pytest.mark.parametrize(("ours", "theirs"), [
    *[(f"ndcg@{k}", f"ndcg_cut_{k}") for k in CUTOFFS],
    *[(f"recall@{k}", f"recall_{k}") for k in CUTOFFS],
    *[(f"p@{k}", f"P_{k}") for k in CUTOFFS],
    *[(f"map@{k}", f"map_cut_{k}") for k in CUTOFFS],
    ("map", "map"), ("mrr", "recip_rank"),
])
def test_agrees_with_pytrec_eval(ours: str, theirs: str, run: Run,
                                 qrels: Qrels,
                                 reference: Measures) -> None:
    values = evaluate(run, qrels, [ours])[ours]
    assert set(reference) == set(qrels) - {"t4"}
    for qid, measures in reference.items():
        assert values[qid] == pytest.approx(measures[theirs], abs=1e-6), qid
    shared = {qid: values[qid] for qid in reference}
    assert mean(shared) == pytest.approx(mean({q: m[theirs] for q, m in reference.items()}), abs=1e-6)


@pytest.mark.parametrize("k", CUTOFFS)
def test_mrr_at_k_agrees_with_pytrec_eval_recip_rank(
    k: int, run: Run, qrels: Qrels,
    reference: Measures,
) -> None:
    # trec_eval has no recip_rank cutoff: the first relevant rank is within k iff 1/rank >= 1/k.
    values = evaluate(run, qrels, [f"mrr@{k}"])[f"mrr@{k}"]
    for qid, measures in reference.items():
        rr = measures["recip_rank"]
        expected = rr if rr > 0 and round(1 / rr) <= k else 0.0
        assert values[qid] == pytest.approx(expected, abs=1e-6), qid


def test_query_without_a_run_scores_zero_and_run_only_queries_are_ignored(
    run: Run, qrels: Qrels
) -> None:
    values = evaluate(run, qrels, ["ndcg@10", "recall@100", "mrr@10", "map"])
    for per_query in values.values():
        assert per_query["t4"] == 0.0 and "t5" not in per_query
        assert set(per_query) == set(qrels)


def test_ties_break_by_descending_document_id() -> None:
    assert rank({"a": 0.5, "c": 0.5, "b": 0.5, "y": 0.9}) == ["y", "c", "b", "a"]


def test_hand_computed_values() -> None:
    judgments = {"a": 3, "b": 0, "c": 1}
    ranking = ["b", "c", "a"]
    ideal = 3 + 1 / 1.584962500721156
    assert ndcg_at_k(ranking, judgments, 10) == pytest.approx((1 / 1.584962500721156 + 3 / 2) / ideal)
    assert reciprocal_rank(ranking, judgments) == 0.5
    assert average_precision(ranking, judgments) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision(ranking, judgments, k=2) == pytest.approx(0.25)


@pytest.mark.parametrize("name", ["ndcg", "bleu@10", "recall@x", "p@0"])
def test_bad_metric_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        Metric.parse(name)


def test_metric_names_round_trip() -> None:
    assert [Metric.parse(n).name for n in ["nDCG@10", "precision@5", "MRR", "map@100"]] == [
        "ndcg@10", "p@5", "mrr", "map@100"]


def test_paired_bootstrap_finds_a_clear_difference() -> None:
    a = [0.6 + 0.01 * (i % 7) for i in range(200)]
    b = [x - 0.1 for x in a]
    diff, low, high, p = paired_bootstrap(a, b, n_resamples=2000)
    assert diff == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    assert p == pytest.approx(1 / 2001)


def test_paired_bootstrap_no_difference_and_reproducibility() -> None:
    a = [(i * 37 % 11) / 10 for i in range(100)]
    b = [(i * 53 % 13) / 12 for i in range(100)]
    first = paired_bootstrap(a, b, seed=3, n_resamples=3000)
    assert first == paired_bootstrap(a, b, seed=3, n_resamples=3000)
    assert first.low < first.mean_diff < first.high
    assert paired_bootstrap(a, a, n_resamples=500).p_value == 1.0


def test_paired_bootstrap_refuses_unpaired_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


@pytest.mark.parametrize(("prediction", "gold", "em", "f1", "contains"), [
    ("The Eiffel Tower!", "eiffel tower", 1.0, 1.0, 1.0),
    ("It was built in 1889 in Paris.", ["1889", "eighteen eighty-nine"], 0.0, 0.25, 1.0),
    ("Paris, France", ["Lyon", "paris"], 0.0, 2 / 3, 1.0),
    ("in 1945", "4", 0.0, 0.0, 0.0),
    ("", "a", 1.0, 1.0, 0.0),
    ("nothing", "the", 0.0, 0.0, 0.0),
])
def test_answer_metrics(prediction: str, gold: str | list[str], em: float, f1: float,
                        contains: float) -> None:
    assert exact_match(prediction, gold) == em
    assert token_f1(prediction, gold) == pytest.approx(f1)
    assert contains_answer(prediction, gold) == contains


def test_answer_metrics_need_a_gold_answer() -> None:
    with pytest.raises(ValueError, match="no gold answers"):
        token_f1("x", [])
