"""Fitting corrective RAG's evaluator thresholds on labelled questions.

A retrieval is labelled *relevant* when one of its chunks contains a gold
answer alias (the PopQA "match" criterion applied to evidence). The
evaluator's score is the best chunk's relevance score. ``upper`` is the
lowest score above which retrievals are relevant with at least the target
precision; ``lower`` the highest score below which they are irrelevant with
at least the target precision. Between them lies *ambiguous*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Thresholds:
    upper: float
    lower: float
    precision_correct: float
    precision_incorrect: float
    share_correct: float
    share_incorrect: float
    n: int


def fit_thresholds(scores: Sequence[float], labels: Sequence[bool], *,
                   target: float = 0.8) -> Thresholds:
    """Thresholds whose *correct* and *incorrect* regions each reach ``target`` precision.

    Raises:
        ValueError: inputs of different lengths, empty, or a target outside (0, 1].
    """
    if len(scores) != len(labels) or not scores:
        raise ValueError("need the same, non-zero number of scores and labels")
    if not 0 < target <= 1:
        raise ValueError("target precision must be in (0, 1]")
    pairs = sorted(zip(scores, labels, strict=True))
    n = len(pairs)
    upper, p_up, n_up = max(scores) + 1e-6, 1.0, 0
    relevant_above = 0
    for i in range(n - 1, -1, -1):  # grow the correct region downwards while precise enough
        relevant_above += pairs[i][1]
        precision = relevant_above / (n - i)
        if precision >= target:
            upper, p_up, n_up = pairs[i][0], precision, n - i
    lower, p_low, n_low = min(scores) - 1e-6, 1.0, 0
    irrelevant_below = 0
    for i in range(n):  # grow the incorrect region upwards while precise enough
        irrelevant_below += not pairs[i][1]
        precision = irrelevant_below / (i + 1)
        if precision >= target and (i + 1 == n or pairs[i + 1][0] <= upper):
            lower, p_low, n_low = pairs[i + 1][0] if i + 1 < n else pairs[i][0], precision, i + 1
    lower = min(lower, upper)
    return Thresholds(upper=round(upper, 4), lower=round(lower, 4),
                      precision_correct=round(p_up, 4), precision_incorrect=round(p_low, 4),
                      share_correct=round(n_up / n, 4), share_incorrect=round(n_low / n, 4), n=n)


@dataclass(frozen=True, slots=True)
class AbstentionThreshold:
    """Where the answerability check should abstain, and what that did on the labelled set."""

    threshold: float
    false_abstain: float  # share of answerable questions scoring below the threshold
    abstain_unanswerable: float  # share of unanswerable questions scoring below it
    n_answerable: int
    n_unanswerable: int


def fit_abstention(scores: Sequence[float], unanswerable: Sequence[bool], *,
                   max_false_abstain: float = 0.1) -> AbstentionThreshold:
    """The highest support threshold that abstains on at most ``max_false_abstain`` of answerable questions.

    A question is abstained on when its score (the best strip's relevance) is
    below the threshold. Raising the threshold abstains on more unanswerable
    questions and on more answerable ones; the fit takes as many unanswerable
    ones as the false-abstention budget allows.

    Raises:
        ValueError: inputs of different lengths, no answerable question, or a
            budget outside [0, 1).
    """
    if len(scores) != len(unanswerable):
        raise ValueError("need as many scores as labels")
    if not 0 <= max_false_abstain < 1:
        raise ValueError("max_false_abstain must be in [0, 1)")
    answerable = sorted(s for s, u in zip(scores, unanswerable, strict=True) if not u)
    other = [s for s, u in zip(scores, unanswerable, strict=True) if u]
    if not answerable:
        raise ValueError("need at least one answerable question")
    allowed = int(max_false_abstain * len(answerable))  # answerable questions we may lose
    # Scores strictly below the threshold are abstained on; round down so that
    # rounding never adds an abstention.
    threshold = math.floor(answerable[allowed] * 10_000) / 10_000
    return AbstentionThreshold(
        threshold=threshold,
        false_abstain=round(sum(s < threshold for s in answerable) / len(answerable), 4),
        abstain_unanswerable=round(sum(s < threshold for s in other) / len(other), 4) if other
        else float("nan"),
        n_answerable=len(answerable), n_unanswerable=len(other))
