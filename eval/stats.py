"""Statistics over per-query values: paired bootstrap rows and bootstrap intervals of means.

Shared by the reports of retrieval and QA runs and by run comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eval.metrics import paired_bootstrap

PerQuery = Mapping[str, Mapping[str, float]]
"""``{metric: {query id: value}}``."""

N_RESAMPLES = 10000
CONFIDENCE = 0.95


def paired_rows(a: PerQuery, b: PerQuery, *, n_resamples: int = N_RESAMPLES,
                confidence: float = CONFIDENCE) -> list[dict[str, Any]]:
    """Paired bootstrap of ``a − b`` for every metric both have, over their common queries.

    Returns:
        One row per metric: ``metric``, ``n`` (paired queries), ``value`` (mean of
        ``a``), ``baseline_value`` (mean of ``b``), ``mean_diff``, ``ci95_low``,
        ``ci95_high``, ``p_value`` and ``significant`` (the interval excludes 0).
    """
    rows = []
    for metric, values in a.items():
        if metric not in b:
            continue
        qids = sorted(set(values) & set(b[metric]))
        if not qids:
            continue
        xs, ys = [values[q] for q in qids], [b[metric][q] for q in qids]
        r = paired_bootstrap(xs, ys, n_resamples=n_resamples, confidence=confidence)
        rows.append({"metric": metric, "n": len(qids), "value": float(np.mean(xs)),
                     "baseline_value": float(np.mean(ys)), "mean_diff": r.mean_diff,
                     "ci95_low": r.low, "ci95_high": r.high, "p_value": r.p_value,
                     "significant": bool(r.low > 0 or r.high < 0)})
    return rows


def mean_ci(values: Sequence[float], *, n_resamples: int = 2000, seed: int = 0,
            confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over queries (Efron & Tibshirani 1993, ch. 13).

    The error bars of a report's plots. NaN values are dropped; ``(nan, nan)`` for none.
    """
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if not data.size:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mean_cis(per_query: PerQuery) -> dict[str, list[float]]:
    """``{metric: [low, high]}``: :func:`mean_ci` of each metric's per-query values."""
    return {m: list(mean_ci(list(v.values()))) for m, v in per_query.items()}
