"""Retrieval quality and latency of the store's dense search modes on a judged query set.

Each query is embedded once; then, for each mode, every query is searched
through the store and timed. Chunk hits are mapped to documents by their
``source`` (a BEIR document is ingested with its ``_id`` as the source), a
document keeping the score of its best chunk, and the document rankings are
scored with :mod:`eval.metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from core.types import ScoredChunk
from eval.metrics import evaluate, means, rank

RetrievalMode = Literal["dense-float32", "dense-binary-rescore"]
STORE_MODES: dict[str, str] = {"dense-float32": "float", "dense-binary-rescore": "binary-rescore"}
"""Harness mode name -> ``mode`` argument of ``PgvectorStore.search_dense``."""

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
RANKING_DEPTH = 100
"""Documents per query kept in :attr:`ModeResult.rankings`."""
HNSW_EF_SEARCH_MAX = 1000
"""pgvector refuses ``hnsw.ef_search`` above this, and the store sets it to depth x oversample."""


class DenseSearcher(Protocol):
    """The part of ``PgvectorStore`` the harness uses."""

    def search_dense(
        self, *, collection: str, query: np.ndarray, top_k: int, mode: str = "float",
        oversample: int = 10,
    ) -> list[ScoredChunk]: ...


class QueryEmbedder(Protocol):
    """The part of the ``Embedder`` protocol the harness uses."""

    name: str

    def embed_query(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class ModeResult:
    """Metrics and latencies of one search mode."""

    mode: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    search_ms: dict[str, float]
    docs_per_query: float
    rankings: dict[str, list[str]] = field(default_factory=dict)
    """Each query's document ids, best first, cut at :data:`RANKING_DEPTH` (drill-down, recall curves)."""

    @property
    def p50_ms(self) -> float:
        return percentile(self.search_ms.values(), 50)

    @property
    def p95_ms(self) -> float:
        return percentile(self.search_ms.values(), 95)


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    """One evaluation: the setup, the query-embedding latencies and each mode's result.

    Example:
        >>> result = evaluate_retrieval(store=store, embedder=embedder, queries=data.queries,
        ...                             qrels=data.qrels, collection="scifact",
        ...                             modes=["dense-float32", "dense-binary-rescore"])
        >>> result.modes[0].metrics["ndcg@10"]
    """

    collection: str
    model: str
    depth: int
    oversample: int
    embed_ms: dict[str, float]
    modes: list[ModeResult]

    @property
    def queries(self) -> int:
        return len(self.embed_ms)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (numpy's linear interpolation); 0 for no values."""
    data = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(data, q)) if data.size else 0.0


def parse_modes(text: str) -> list[str]:
    """``"dense-float32,dense-binary-rescore"`` -> a checked list of mode names.

    Raises:
        ValueError: an unknown or repeated mode, or none at all.
    """
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in STORE_MODES]
    if not modes or unknown or len(set(modes)) != len(modes):
        raise ValueError(f"modes must be a comma-separated list of distinct modes from "
                         f"{', '.join(STORE_MODES)}; got {text!r}")
    return modes


def check_setup(modes: Sequence[str], *, depth: int, oversample: int) -> None:
    """Refuse settings the store cannot run, before any query is sent.

    Raises:
        ValueError: an unknown mode, a non-positive depth or oversample, or a
            binary candidate count above pgvector's ``hnsw.ef_search`` limit.
    """
    parse_modes(",".join(modes))
    if depth < 1 or oversample < 1:
        raise ValueError("depth and oversample must be positive")
    if "dense-binary-rescore" in modes and depth * oversample > HNSW_EF_SEARCH_MAX:
        raise ValueError(f"depth x oversample = {depth * oversample} binary candidates, over "
                         f"pgvector's hnsw.ef_search limit of {HNSW_EF_SEARCH_MAX}; lower one")


def evaluate_retrieval(
    *, store: DenseSearcher, embedder: QueryEmbedder, queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]], collection: str, modes: Sequence[str],
    depth: int = 250, oversample: int = 4, metrics: Sequence[str] = METRICS,
) -> RetrievalResult:
    """Search every judged query in every mode and score the document rankings.

    Args:
        store: the store holding the ingested corpus.
        embedder: the model the collection was built with.
        queries: ``{qid: text}``; every qrels query must have a text.
        qrels: ``{qid: {docid: grade}}``; these queries are evaluated.
        collection: the collection the corpus was ingested into.
        modes: names from :data:`STORE_MODES`.
        depth: chunks retrieved per query (documents ranked are at most this many).
        oversample: binary candidates = ``depth x oversample``, then rescored.
        metrics: metric names for :func:`eval.metrics.evaluate`.

    Returns:
        The result of each mode, in the order given.

    Raises:
        ValueError: an invalid setup, or a judged query without text.
        RagError: the store or embedder failed (e.g. ``NotFoundError`` for a
            missing collection).
    """
    check_setup(modes, depth=depth, oversample=oversample)
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise ValueError(f"judged queries without text: {', '.join(missing[:5])}")
    vectors, embed_ms = _embed_queries(embedder, {qid: queries[qid] for qid in qrels})
    results = [
        _run_mode(store, vectors, qrels, collection=collection, mode=mode, depth=depth,
                  oversample=oversample, metrics=metrics)
        for mode in modes
    ]
    return RetrievalResult(collection=collection, model=embedder.name, depth=depth,
                           oversample=oversample, embed_ms=embed_ms, modes=results)


def _embed_queries(
    embedder: QueryEmbedder, queries: Mapping[str, str]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    vectors: dict[str, np.ndarray] = {}
    elapsed: dict[str, float] = {}
    for text in list(queries.values())[:1]:
        embedder.embed_query(text)  # untimed warm-up
    for qid, text in queries.items():
        started = time.perf_counter()
        vectors[qid] = embedder.embed_query(text)
        elapsed[qid] = (time.perf_counter() - started) * 1000
    return vectors, elapsed


def _run_mode(
    store: DenseSearcher, vectors: Mapping[str, np.ndarray], qrels: Mapping[str, Mapping[str, int]],
    *, collection: str, mode: str, depth: int, oversample: int, metrics: Sequence[str],
) -> ModeResult:
    def search(vector: np.ndarray) -> list[ScoredChunk]:
        return store.search_dense(collection=collection, query=vector, top_k=depth,
                                  mode=STORE_MODES[mode], oversample=oversample)

    if vectors:
        search(next(iter(vectors.values())))  # untimed warm-up: connection, plan, caches
    run: dict[str, dict[str, float]] = {}
    elapsed: dict[str, float] = {}
    for qid, vector in vectors.items():
        started = time.perf_counter()
        hits = search(vector)
        elapsed[qid] = (time.perf_counter() - started) * 1000
        run[qid] = best_chunk_per_document(hits)
    per_query = evaluate(run, qrels, metrics)
    docs = float(np.mean([len(r) for r in run.values()])) if run else 0.0
    return ModeResult(mode=mode, metrics=means(per_query), per_query=per_query,
                      search_ms=elapsed, docs_per_query=docs,
                      rankings={qid: rank(scores)[:RANKING_DEPTH] for qid, scores in run.items()})


def best_chunk_per_document(hits: Sequence[ScoredChunk]) -> dict[str, float]:
    """``{document source: best chunk score}`` (MaxP: a document is as good as its best chunk)."""
    scores: dict[str, float] = {}
    for hit in hits:
        if hit.score > scores.get(hit.source, -np.inf):
            scores[hit.source] = hit.score
    return scores
