"""Fusing ranked lists from several retrievers. Pure functions over ``ScoredChunk`` lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from verity.core.types import ScoredChunk

Fusion = Literal["rrf", "weighted"]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[ScoredChunk]], *, k: int = 60, top_k: int | None = None,
    stage: str = "rrf",
) -> list[ScoredChunk]:
    """Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): sum of 1 / (k + rank).

    The fused score is stored under ``scores[stage]``.
    """
    fused: dict[str, float] = {}
    best: dict[str, ScoredChunk] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.chunk.id] = fused.get(hit.chunk.id, 0.0) + 1.0 / (k + rank)
            best[hit.chunk.id] = _merge(best.get(hit.chunk.id), hit)
    return _ranked(best, fused, stage, top_k)


def weighted_fusion(
    rankings: Sequence[Sequence[ScoredChunk]], *, weights: Sequence[float],
    top_k: int | None = None,
) -> list[ScoredChunk]:
    """Convex combination of min-max normalised scores; a missing hit counts as 0."""
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    fused: dict[str, float] = {}
    best: dict[str, ScoredChunk] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        scores = [h.score for h in ranking]
        low, span = min(scores), (max(scores) - min(scores)) or 1.0
        for hit in ranking:
            fused[hit.chunk.id] = fused.get(hit.chunk.id, 0.0) + weight * (hit.score - low) / span
            best[hit.chunk.id] = _merge(best.get(hit.chunk.id), hit)
    return _ranked(best, fused, "weighted", top_k)


def interpolate(
    first: Sequence[ScoredChunk], reranked: Sequence[ScoredChunk], *, weight: float,
    top_k: int | None = None,
) -> list[ScoredChunk]:
    """Rerank by ``weight x reranker score + (1 - weight) x first-stage score``.

    Both are min-max normalised over the candidates; a chunk missing from either
    list counts as 0 there. The result is stored under ``scores["rerank_interp"]``;
    the hits keep the reranker's per-stage scores.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"rerank weight must be between 0 and 1, got {weight}")
    fused = weighted_fusion([reranked, first], weights=[weight, 1.0 - weight], top_k=top_k)
    return [replace(h, scores={**{k: v for k, v in h.scores.items() if k != "weighted"},
                               "rerank_interp": h.score}) for h in fused]


def fuse(
    rankings: Sequence[Sequence[ScoredChunk]], *, method: Fusion, dense_weight: float = 0.5,
    rrf_k: int = 60, top_k: int | None = None,
) -> list[ScoredChunk]:
    """Fuse ``[dense, lexical]`` rankings by ``method``."""
    match method:
        case "rrf":
            return reciprocal_rank_fusion(rankings, k=rrf_k, top_k=top_k)
        case "weighted":
            return weighted_fusion(rankings, weights=[dense_weight, 1 - dense_weight], top_k=top_k)
        case _:
            raise ValueError(f"unknown fusion {method!r}; use 'rrf' or 'weighted'")


def _merge(old: ScoredChunk | None, new: ScoredChunk) -> ScoredChunk:
    if old is None:
        return new
    return replace(old, scores={**old.scores, **new.scores})


def _ranked(best: dict[str, ScoredChunk], fused: dict[str, float], stage: str,
            top_k: int | None) -> list[ScoredChunk]:
    order = sorted(fused, key=lambda cid: (-fused[cid], cid))[:top_k]
    return [replace(best[c], score=fused[c], scores={**best[c].scores, stage: fused[c]})
            for c in order]
