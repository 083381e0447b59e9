"""Retrieval and answer metrics, with trec_eval's conventions.

Inputs are plain dictionaries, the shapes ``pytrec_eval`` and BEIR use:

* a run: ``{qid: {docid: score}}`` (higher is better, any number of documents);
* qrels: ``{qid: {docid: graded_relevance}}`` (integers; ``>= 1`` is relevant,
  ``0`` judged non-relevant, negative "in the pool but unjudged").

Ranking follows trec_eval (``form_res_rels.c``): documents by score,
descending, and ties broken by document id in *descending* byte order. So a
run evaluated here and by trec_eval ranks tied documents identically.

Which queries count: every query in the qrels. A query the run has no
documents for scores 0 on every metric (trec_eval's ``-c``); queries that are
only in the run are ignored. ``pytrec_eval`` instead leaves queries without a
run out of its output, so means differ when a run skips queries.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]
Judgments = Mapping[str, int]

RELEVANCE_LEVEL = 1
"""Grades at or above this are relevant (trec_eval's default ``-l 1``)."""

MetricKind = Literal["ndcg", "recall", "precision", "mrr", "map"]
_KIND_ALIASES: dict[str, MetricKind] = {
    "ndcg": "ndcg", "recall": "recall", "p": "precision", "precision": "precision",
    "mrr": "mrr", "map": "map",
}
_NEEDS_CUTOFF: frozenset[MetricKind] = frozenset({"ndcg", "recall", "precision"})


# --- ranking -------------------------------------------------------------------------------


def rank(scores: Mapping[str, float]) -> list[str]:
    """Document ids best first, ordered exactly as trec_eval orders them.

    Args:
        scores: ``{docid: score}`` for one query.

    Returns:
        Ids by score descending; equal scores by id descending (trec_eval's
        ``comp_sim_docno``: ``strcmp(docno2, docno1)``).
    """
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]),
                                     reverse=True)]


def _relevant_count(judgments: Judgments) -> int:
    return sum(1 for grade in judgments.values() if grade >= RELEVANCE_LEVEL)


def _is_relevant(doc: str, judgments: Judgments) -> bool:
    return judgments.get(doc, 0) >= RELEVANCE_LEVEL


def _check_k(k: int | None) -> None:
    if k is not None and k < 1:
        raise ValueError(f"cutoff k must be a positive integer, got {k}")


# --- per-query metrics ---------------------------------------------------------------------


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain of gains listed in rank order.

    ``sum(gain_i / log2(i + 1))`` over ranks ``i = 1, 2, ...``, counting only
    positive gains: the discount trec_eval 9.0.8's ``ndcg_cut`` uses.
    """
    return sum(g / math.log2(i + 1) for i, g in enumerate(gains, start=1) if g > 0)


def ndcg_at_k(ranking: Sequence[str], judgments: Judgments, k: int) -> float:
    """Normalised discounted cumulative gain at rank ``k``.

    Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques",
    ACM TOIS 20(4), 2002, with trec_eval's conventions (``m_ndcg_cut.c``): the
    gain of a document is its graded relevance as given in the qrels (no
    ``2^rel - 1``), negative or zero grades gain nothing, the discount is
    ``log2(rank + 1)``, and the ideal DCG ranks every judged document of the
    query by grade and is cut at ``k`` too. A query with no positive grade
    scores 0.

    Args:
        ranking: document ids, best first.
        judgments: ``{docid: grade}`` for the query.
        k: rank cutoff.

    Returns:
        A value in ``[0, 1]``.
    """
    _check_k(k)
    ideal = dcg(sorted((g for g in judgments.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([judgments.get(doc, 0) for doc in ranking[:k]]) / ideal


def recall_at_k(ranking: Sequence[str], judgments: Judgments, k: int) -> float:
    """Fraction of the query's relevant documents found in the top ``k``.

    trec_eval's ``recall_k`` (``m_recall.c``): relevant retrieved at rank
    ``<= k`` divided by all relevant documents in the qrels (grade ``>= 1``);
    0 for a query without relevant documents.
    """
    _check_k(k)
    total = _relevant_count(judgments)
    if total == 0:
        return 0.0
    return sum(1 for doc in ranking[:k] if _is_relevant(doc, judgments)) / total


def precision_at_k(ranking: Sequence[str], judgments: Judgments, k: int) -> float:
    """Fraction of the top ``k`` positions holding a relevant document.

    trec_eval's ``P_k`` (``m_P.c``): relevant retrieved at rank ``<= k``
    divided by ``k``, even when fewer than ``k`` documents were retrieved.
    """
    _check_k(k)
    return sum(1 for doc in ranking[:k] if _is_relevant(doc, judgments)) / k


def reciprocal_rank(ranking: Sequence[str], judgments: Judgments, k: int | None = None) -> float:
    """``1 / rank`` of the first relevant document, 0 if none is in the top ``k``.

    trec_eval's ``recip_rank`` (``m_recip_rank.c``); with ``k`` only ranks
    ``<= k`` count (MRR@k as in MS MARCO's evaluation). The mean over queries
    is the mean reciprocal rank.
    """
    _check_k(k)
    for position, doc in enumerate(ranking[:k], start=1):
        if _is_relevant(doc, judgments):
            return 1.0 / position
    return 0.0


def average_precision(ranking: Sequence[str], judgments: Judgments, k: int | None = None) -> float:
    """Average precision, optionally cut at rank ``k``.

    trec_eval's ``map`` (``m_map.c``) and ``map_cut_k`` (``m_map_cut.c``): the
    precision at the rank of each relevant document retrieved (within the top
    ``k``), summed and divided by the number of relevant documents in the
    qrels, so relevant documents never retrieved count as precision 0. The
    mean over queries is MAP.
    """
    _check_k(k)
    total = _relevant_count(judgments)
    if total == 0:
        return 0.0
    found, summed = 0, 0.0
    for position, doc in enumerate(ranking[:k], start=1):
        if _is_relevant(doc, judgments):
            found += 1
            summed += found / position
    return summed / total


# --- named metrics over a run --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric with its cutoff, parsed from names like ``ndcg@10``, ``map`` or ``p@5``."""

    kind: MetricKind
    k: int | None = None

    @classmethod
    def parse(cls, name: str) -> Metric:
        """Parse ``kind[@k]``; kinds are ndcg, recall, p (precision), mrr and map.

        Raises:
            ValueError: an unknown kind, a bad cutoff, or a kind that needs one without it.
        """
        kind_text, _, k_text = name.strip().lower().partition("@")
        kind = _KIND_ALIASES.get(kind_text)
        if kind is None:
            raise ValueError(f"unknown metric {name!r}; use ndcg@k, recall@k, p@k, mrr[@k] or map[@k]")
        if k_text and not k_text.isdigit():
            raise ValueError(f"bad cutoff in metric {name!r}; write e.g. {kind_text}@10")
        k = int(k_text) if k_text else None
        if k is None and kind in _NEEDS_CUTOFF:
            raise ValueError(f"metric {name!r} needs a cutoff, e.g. {kind_text}@10")
        _check_k(k)
        return cls(kind, k)

    @property
    def name(self) -> str:
        short = "p" if self.kind == "precision" else self.kind
        return short if self.k is None else f"{short}@{self.k}"

    def score(self, ranking: Sequence[str], judgments: Judgments) -> float:
        """This metric for one query."""
        return _SCORERS[self.kind](ranking, judgments, self.k)


_SCORERS: dict[MetricKind, Callable[[Sequence[str], Judgments, int | None], float]] = {
    "ndcg": lambda r, j, k: ndcg_at_k(r, j, k or 0),
    "recall": lambda r, j, k: recall_at_k(r, j, k or 0),
    "precision": lambda r, j, k: precision_at_k(r, j, k or 0),
    "mrr": reciprocal_rank,
    "map": average_precision,
}


def evaluate(run: Run, qrels: Qrels, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-query values of each named metric.

    Args:
        run: ``{qid: {docid: score}}``.
        qrels: ``{qid: {docid: grade}}``; its queries are the ones evaluated.
        metrics: names such as ``["ndcg@10", "recall@100", "mrr@10", "map"]``.

    Returns:
        ``{metric_name: {qid: value}}`` with every qrels query present.

    Raises:
        ValueError: a metric name is not understood.
    """
    parsed = [Metric.parse(name) for name in metrics]
    rankings = {qid: rank(run.get(qid, {})) for qid in qrels}
    return {
        metric.name: {qid: metric.score(rankings[qid], qrels[qid]) for qid in qrels}
        for metric in parsed
    }


def mean(per_query: Mapping[str, float]) -> float:
    """The arithmetic mean over queries (0 for no queries), as trec_eval's ``all`` line."""
    return float(sum(per_query.values()) / len(per_query)) if per_query else 0.0


def means(per_metric: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{metric: mean}`` from ``evaluate``'s output."""
    return {name: mean(values) for name, values in per_metric.items()}


# --- significance --------------------------------------------------------------------------


class BootstrapResult(NamedTuple):
    """Mean of ``a - b``, its confidence interval and a two-sided p-value."""

    mean_diff: float
    low: float
    high: float
    p_value: float


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10000, seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap over queries for the difference of two systems' per-query scores.

    Queries are resampled with replacement and the mean difference recomputed
    (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13 and
    16; applied to IR by Sakai, SIGIR 2006). The interval is the percentile
    interval of the resampled means. The p-value tests "no difference" by
    shifting the resampled means to a zero mean (Efron & Tibshirani, alg.
    16.2): the share whose absolute value reaches the observed one, with the
    ``(1 + count) / (1 + n)`` correction (Davison & Hinkley 1997) so it is
    never exactly 0.

    Args:
        a: per-query scores of system A, in the same query order as ``b``.
        b: per-query scores of system B.
        n_resamples: bootstrap resamples.
        seed: seed of numpy's default generator, for reproducible reports.
        confidence: two-sided coverage of the interval.

    Returns:
        ``(mean_diff, low, high, p_value)`` where ``mean_diff = mean(a - b)``.

    Raises:
        ValueError: lengths differ, are empty, or a parameter is out of range.
    """
    diffs = _paired_diffs(a, b)
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError("n_resamples must be >= 1 and confidence in (0, 1)")
    observed = float(diffs.mean())
    resampled = _resampled_means(diffs, n_resamples=n_resamples, seed=seed)
    alpha = 1 - confidence
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    extreme = int(np.count_nonzero(np.abs(resampled - observed) >= abs(observed) - 1e-12))
    p_value = (1 + extreme) / (1 + n_resamples)
    return BootstrapResult(observed, float(low), float(high), min(1.0, p_value))


def _paired_diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    if len(a) != len(b):
        raise ValueError(f"paired lists differ in length ({len(a)} vs {len(b)}); pass the "
                         "same queries in the same order")
    if not len(a):
        raise ValueError("no per-query values to compare")
    return np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)


def _resampled_means(diffs: np.ndarray, *, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(diffs)
    batch = max(1, 2_000_000 // n)  # bounds memory: about 16 MB of indices per batch
    parts = []
    for start in range(0, n_resamples, batch):
        size = min(batch, n_resamples - start)
        parts.append(diffs[rng.integers(0, n, size=(size, n))].mean(axis=1))
    return np.concatenate(parts)


# --- answer metrics ------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation and articles, squeeze spaces.

    The same steps, in the same order, as ``normalize_answer`` in the official
    SQuAD v1.1/v2.0 evaluation scripts (Rajpurkar et al. 2016, 2018).
    """
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _aliases(gold: str | Sequence[str]) -> list[str]:
    aliases = [gold] if isinstance(gold, str) else list(gold)
    if not aliases:
        raise ValueError("no gold answers given; pass at least one alias")
    return aliases


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold alias, else 0.0 (SQuAD EM)."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(g) for g in _aliases(gold)))


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD's token-overlap F1, the best over the gold aliases.

    Tokens are the whitespace-separated words after :func:`normalize_answer`;
    overlap counts shared tokens with multiplicity. As in SQuAD v2.0, when
    either side has no tokens the score is 1.0 if both are empty, else 0.0.
    """
    predicted = normalize_answer(prediction).split()
    return max(_f1(predicted, normalize_answer(g).split()) for g in _aliases(gold))


def _f1(predicted: list[str], gold: list[str]) -> float:
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 if any gold alias occurs in the prediction, both normalised, else 0.0.

    The match is on whole normalised tokens (``"4"`` is not found in
    ``"1945"``), like DPR's ``has_answer``; an alias that normalises to
    nothing never matches. An alias with Chinese, Japanese or Korean characters
    is matched as a case-insensitive substring instead (RGB's ``checkanswer``).
    """
    haystack = f" {normalize_answer(prediction)} "
    for alias in _aliases(gold):
        if has_cjk(alias):  # no spaces to match tokens on: substring, as RGB does
            if alias.lower() in prediction.lower():
                return 1.0
            continue
        needle = normalize_answer(alias)
        if needle and f" {needle} " in haystack:
            return 1.0
    return 0.0


_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def contains_answer_groups(prediction: str, groups: Sequence[Sequence[str]]) -> float:
    """1.0 if the prediction contains an alias of *every* answer group, else 0.0.

    RGB's ``checkanswer`` (Chen et al., "Benchmarking Large Language Models in
    Retrieval-Augmented Generation", AAAI 2024; ``evalue.py`` in the RGB
    repository): each element of the gold list must occur in the lower-cased
    prediction as a substring, and an element that is itself a list is
    satisfied by any one of its aliases. RGB counts an answer correct when no
    element is missing; we do the same. Substring matching is what RGB uses and
    suits Chinese, which has no spaces to match whole tokens on.

    Raises:
        ValueError: no groups, or an empty group.
    """
    if not groups or any(not g for g in groups):
        raise ValueError("no gold answer groups given; pass at least one alias per group")
    text = prediction.lower()
    return float(all(any(alias.lower() in text for alias in group) for group in groups))


def has_cjk(text: str) -> bool:
    """Whether the text holds Chinese, Japanese or Korean characters (matched as substrings)."""
    return bool(_CJK.search(text))


def abstention_precision(abstained: Sequence[bool], unanswerable: Sequence[bool]) -> float:
    """Share of abstentions that were on unanswerable questions (NaN when none abstained).

    Precision of abstaining treated as a binary classifier of "this question
    cannot be answered from the documents", as in selective question answering
    (Kamath, Jia & Liang, "Selective Question Answering under Domain Shift", ACL
    2020) and SQuAD 2.0's no-answer evaluation (Rajpurkar et al. 2018):
    ``|abstained ∧ unanswerable| / |abstained|``.
    """
    pairs = _paired_flags(abstained, unanswerable)
    hits = [u for a, u in pairs if a]
    return sum(hits) / len(hits) if hits else float("nan")


def abstention_recall(abstained: Sequence[bool], unanswerable: Sequence[bool]) -> float:
    """Share of unanswerable questions that were abstained on (NaN when none is unanswerable).

    Recall of the same classifier as :func:`abstention_precision`:
    ``|abstained ∧ unanswerable| / |unanswerable|``; RGB calls it the rejection
    rate on negative-only contexts (Chen et al., AAAI 2024, §3.2).
    """
    pairs = _paired_flags(abstained, unanswerable)
    hits = [a for a, u in pairs if u]
    return sum(hits) / len(hits) if hits else float("nan")


def _paired_flags(a: Sequence[bool], b: Sequence[bool]) -> list[tuple[bool, bool]]:
    if len(a) != len(b):
        raise ValueError(f"flag lists differ in length ({len(a)} vs {len(b)})")
    return list(zip(a, b, strict=True))


def context_precision(relevant: Sequence[bool]) -> float:
    """Rank-weighted precision of the contexts given to the model, in their order.

    RAGAS's context precision (Es et al., "RAGAS: Automated Evaluation of
    Retrieval Augmented Generation", EACL 2024 demos; ``context_precision`` in
    the ragas library): ``sum_k (precision@k * v_k) / (number of relevant
    contexts)`` over ranks ``k = 1..K``, with ``v_k = 1`` when the k-th context
    is relevant. It equals average precision over the contexts actually given,
    so a relevant context ranked first counts more than one ranked last.
    RAGAS asks an LLM whether each context is relevant; this harness uses the
    reference answer instead (relevant = it contains a gold answer), DPR's
    ``has_answer`` notion, so the metric needs no judge. 0 when none is relevant.

    Args:
        relevant: one flag per context, in the order given to the model.
    """
    found, summed = 0, 0.0
    for k, flag in enumerate(relevant, start=1):
        if flag:
            found += 1
            summed += found / k
    return summed / found if found else 0.0


def faithfulness(supported: Sequence[bool]) -> float:
    """Share of an answer's statements supported by the text they cite (NaN for none).

    RAGAS's faithfulness (Es et al., EACL 2024, §2): the answer is split into
    statements, a judge decides for each whether it can be inferred from the
    context, and the score is ``|supported| / |statements|``. Here a statement
    is a sentence of the answer and its context is the text of the sources the
    sentence cites (all given sources when it cites none), following the
    attribution check of Gao et al., "Enabling Large Language Models to Generate
    Text with Citations" (ALCE, EMNLP 2023). The judge is a model; reports name it.
    """
    return sum(supported) / len(supported) if supported else float("nan")
