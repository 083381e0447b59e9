"""Retrieval quality, latency and index size of each search mode on a judged query set.

Each query is embedded once (timed separately); then, for each mode, every query
is searched and timed. The modes:

* ``bm25``: the store's BM25 over its postings.
* ``dense-float32``: exact cosine search over the stored float vectors (the reference).
* ``dense-int8``: the FAISS accelerator: ``depth x oversample`` binary candidates,
  rescored by the float query against their int8 codes (no float vectors read).
* ``dense-binary``: Hamming distance over the bit codes alone (the HNSW index), no rescoring.
* ``dense-binary-rescore``: ``depth x oversample`` binary candidates rescored with
  their float vectors.
* ``hybrid``: BM25 and dense search fused, exactly as :class:`verity.answering.pipeline.RagPipeline`
  retrieves (same settings: fusion, ``rrf_k``, candidates per retriever, dense mode).
* ``hybrid+rerank``: ``hybrid`` with the reranker re-scoring its first ``top_n``
  candidates; the rest keep the first-stage order behind them.

Chunk hits are mapped to documents by their ``source`` (a BEIR document is
ingested with its ``_id`` as the source), a document keeping the score of its
best chunk, and the document rankings are scored with :mod:`eval.metrics`.
Latencies never include the query embedding: every mode gets the same,
already-embedded query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from eval.metrics import evaluate, means, rank
from verity.answering.pipeline import RagPipeline
from verity.core.protocols import Reranker, Store
from verity.core.settings import RetrievalSettings
from verity.core.types import DenseMode, ScoredChunk

RetrievalMode = Literal["bm25", "dense-float32", "dense-int8", "dense-binary",
                        "dense-binary-rescore", "hybrid", "hybrid+rerank"]
MODES: tuple[str, ...] = ("bm25", "dense-float32", "dense-int8", "dense-binary",
                          "dense-binary-rescore", "hybrid", "hybrid+rerank")
STORE_MODES: dict[str, DenseMode] = {"dense-float32": "float", "dense-binary": "binary",
                                     "dense-binary-rescore": "binary-rescore"}
"""Harness mode name -> ``mode`` argument of ``Store.search_dense``."""
DEFAULT_MODES = ("dense-float32", "dense-binary-rescore")

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
RANKING_DEPTH = 100
"""Documents per query kept in :attr:`ModeResult.rankings`."""
HNSW_EF_SEARCH_MAX = 1000
"""pgvector refuses ``hnsw.ef_search`` above this, and the store sets it to depth x oversample."""


class Int8Searcher(Protocol):
    """Binary candidates rescored by int8 codes: ``FaissAccelerator`` wrapped with the store
    (see :func:`faiss_int8_searcher`)."""

    def __call__(self, query: np.ndarray, *, top_k: int, oversample: int) -> list[ScoredChunk]: ...


class QueryEmbedder(Protocol):
    """The part of the ``Embedder`` protocol the harness uses."""

    name: str

    def embed_query(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class RerankSetup:
    """The second stage of ``hybrid+rerank``: a reranker and how its scores are used."""

    reranker: Reranker
    top_n: int = 30
    fusion: str = "replace"
    weight: float = 0.5


@dataclass(frozen=True, slots=True)
class ModeResult:
    """Metrics, latencies and index size of one search mode."""

    mode: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    search_ms: dict[str, float]
    docs_per_query: float
    rankings: dict[str, list[str]] = field(default_factory=dict)
    """Each query's document ids, best first, cut at :data:`RANKING_DEPTH` (drill-down, recall curves)."""
    index_bytes: dict[str, int] = field(default_factory=dict)
    """What the mode searches, by part (e.g. ``bit_hnsw``, ``halfvec``); empty if unknown."""

    @property
    def p50_ms(self) -> float:
        return percentile(self.search_ms.values(), 50)

    @property
    def p95_ms(self) -> float:
        return percentile(self.search_ms.values(), 95)

    @property
    def index_total_bytes(self) -> int:
        return sum(self.index_bytes.values())


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    """One evaluation: the setup, the query-embedding latencies and each mode's result.

    Example:
        >>> result = evaluate_retrieval(store=store, embedder=embedder, queries=data.queries,
        ...                             qrels=data.qrels, collection="scifact",
        ...                             modes=["bm25", "dense-float32", "hybrid"])
        >>> result.modes[0].metrics["ndcg@10"]
    """

    collection: str
    model: str
    depth: int
    oversample: int
    embed_ms: dict[str, float]
    modes: list[ModeResult]
    settings: dict[str, Any] = field(default_factory=dict)
    """The retrieval and rerank settings the modes ran with."""

    @property
    def queries(self) -> int:
        return len(self.embed_ms)


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (numpy's linear interpolation); 0 for no values."""
    data = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(data, q)) if data.size else 0.0


def parse_modes(text: str) -> list[str]:
    """``"bm25,dense-float32,hybrid"`` -> a checked list of mode names (``all``: every mode).

    Raises:
        ValueError: an unknown or repeated mode, or none at all.
    """
    if text.strip() == "all":
        return list(MODES)
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown or len(set(modes)) != len(modes):
        raise ValueError(f"modes must be 'all' or a comma-separated list of distinct modes from "
                         f"{', '.join(MODES)}; got {text!r}")
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
    if "dense-binary" in modes and depth > HNSW_EF_SEARCH_MAX:
        raise ValueError(f"depth {depth} is over pgvector's hnsw.ef_search limit of "
                         f"{HNSW_EF_SEARCH_MAX} for dense-binary; lower it")


def evaluate_retrieval(
    *, store: Store, embedder: QueryEmbedder, queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]], collection: str, modes: Sequence[str],
    depth: int = 250, oversample: int = 4, metrics: Sequence[str] = METRICS,
    retrieval: RetrievalSettings | None = None, rerank: RerankSetup | None = None,
    int8: Int8Searcher | None = None, index_bytes: Mapping[str, Mapping[str, int]] | None = None,
) -> RetrievalResult:
    """Search every judged query in every mode and score the document rankings.

    Args:
        store: the store holding the ingested corpus.
        embedder: the model the collection was built with.
        queries: ``{qid: text}``; every qrels query must have a text.
        qrels: ``{qid: {docid: grade}}``; these queries are evaluated.
        collection: the collection the corpus was ingested into.
        modes: names from :data:`MODES`.
        depth: chunks retrieved per query (documents ranked are at most this many).
        oversample: binary candidates = ``depth x oversample``, then rescored.
        metrics: metric names for :func:`eval.metrics.evaluate`.
        retrieval: BM25 parameters and the hybrid setup (fusion, candidates, dense
            mode); the defaults of :class:`RetrievalSettings` if None.
        rerank: the second stage of ``hybrid+rerank`` (required for that mode).
        int8: the int8 searcher of ``dense-int8`` (required for that mode).
        index_bytes: ``{mode: {part: bytes}}`` to report with each mode (see
            :func:`mode_index_bytes`).

    Returns:
        The result of each mode, in the order given.

    Raises:
        ValueError: an invalid setup, a mode without its backend, or a judged query
            without text.
        RagError: the store or embedder failed (e.g. ``NotFoundError`` for a
            missing collection).
    """
    check_setup(modes, depth=depth, oversample=oversample)
    if "hybrid+rerank" in modes and rerank is None:
        raise ValueError("mode hybrid+rerank needs a reranker")
    if "dense-int8" in modes and int8 is None:
        raise ValueError("mode dense-int8 needs the FAISS int8 index")
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise ValueError(f"judged queries without text: {', '.join(missing[:5])}")
    cfg = retrieval or RetrievalSettings()
    texts = {qid: queries[qid] for qid in qrels}
    vectors, embed_ms = _embed_queries(embedder, texts)
    results = []
    for mode in modes:
        search = _searcher(mode, store=store, embedder=embedder, texts=texts, vectors=vectors,
                           collection=collection, depth=depth, oversample=oversample, cfg=cfg,
                           rerank=rerank, int8=int8)
        result = _run_mode(search, texts, qrels, mode=mode, metrics=metrics)
        results.append(ModeResult(**{**_fields(result),
                                     "index_bytes": dict((index_bytes or {}).get(mode, {}))}))
    return RetrievalResult(collection=collection, model=embedder.name, depth=depth,
                           oversample=oversample, embed_ms=embed_ms, modes=results,
                           settings=_settings(cfg, rerank))


def _fields(result: ModeResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in ModeResult.__dataclass_fields__}


def _settings(cfg: RetrievalSettings, rerank: RerankSetup | None) -> dict[str, Any]:
    keys = ("fusion", "candidates", "rrf_k", "dense_weight", "bm25_k1", "bm25_b", "dense_mode")
    out: dict[str, Any] = {"retrieval": {k: getattr(cfg, k) for k in keys}}
    if rerank is not None:
        out["rerank"] = {"reranker": getattr(rerank.reranker, "name", type(rerank.reranker).__name__),
                         "top_n": rerank.top_n, "fusion": rerank.fusion, "weight": rerank.weight}
    return out


Search = Callable[[str, str], list[ScoredChunk]]
"""``search(qid, text)`` -> ranked chunks."""


def _searcher(
    mode: str, *, store: Store, embedder: QueryEmbedder, texts: Mapping[str, str],
    vectors: Mapping[str, np.ndarray], collection: str, depth: int, oversample: int, cfg: RetrievalSettings,
    rerank: RerankSetup | None, int8: Int8Searcher | None,
) -> Search:
    if mode in STORE_MODES:
        return lambda qid, _: store.search_dense(collection=collection, query=vectors[qid],
                                                 top_k=depth, mode=STORE_MODES[mode],
                                                 oversample=oversample)
    if mode == "bm25":
        return lambda _, text: store.search_lexical(collection=collection, query=text, top_k=depth,
                                                    k1=cfg.bm25_k1, b=cfg.bm25_b)
    if mode == "dense-int8":
        assert int8 is not None
        return lambda qid, _: int8(vectors[qid], top_k=depth, oversample=oversample)
    second = rerank if mode == "hybrid+rerank" else None
    embedded = _Embedded(embedder.name, {texts[qid]: vectors[qid] for qid in vectors})
    rag = RagPipeline(store=store, embedder=embedded,  # type: ignore[arg-type]
                      generator=None, prompts=None,  # type: ignore[arg-type]
                      settings=cfg.model_copy(update={"mode": "hybrid"}),
                      reranker=second.reranker if second else None,
                      rerank_top_n=second.top_n if second else 30,
                      rerank_fusion=second.fusion if second else "replace",
                      rerank_weight=second.weight if second else 0.5)
    return lambda _, text: rag.retrieve(text, collection=collection, top_k=depth)
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


def _run_mode(search: Search, texts: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
              *, mode: str, metrics: Sequence[str]) -> ModeResult:
    if texts:
        search(*next(iter(texts.items())))  # untimed warm-up: connection, plan, caches, models
    run: dict[str, dict[str, float]] = {}
    elapsed: dict[str, float] = {}
    for qid, text in texts.items():
        started = time.perf_counter()
        hits = search(qid, text)
        elapsed[qid] = (time.perf_counter() - started) * 1000
        run[qid] = document_scores(hits)
    per_query = evaluate(run, qrels, metrics)
    docs = float(np.mean([len(r) for r in run.values()])) if run else 0.0
    return ModeResult(mode=mode, metrics=means(per_query), per_query=per_query,
                      search_ms=elapsed, docs_per_query=docs,
                      rankings={qid: rank(scores)[:RANKING_DEPTH] for qid, scores in run.items()})


class _Embedded:
    """An embedder that answers from the queries embedded up front, so that the hybrid
    modes time retrieval alone, like the others."""

    def __init__(self, name: str, vectors: Mapping[str, np.ndarray]) -> None:
        self.name = name
        self._vectors = dict(vectors)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vectors[text]


def document_scores(hits: Sequence[ScoredChunk]) -> dict[str, float]:
    """``{document source: score}`` that ranks documents in the order of their best chunk.

    A document keeps its best chunk's rank (MaxP). Scores are rank-derived
    (``1 / rank`` of the document), so a ranking whose scores are not comparable
    throughout (a reranked head above a first-stage tail) still ranks as ordered.
    """
    order: dict[str, float] = {}
    for hit in hits:
        if hit.source not in order:
            order[hit.source] = 1.0 / (len(order) + 1)
    return order


def best_chunk_per_document(hits: Sequence[ScoredChunk]) -> dict[str, float]:
    """``{document source: best chunk score}`` (MaxP: a document is as good as its best chunk)."""
    scores: dict[str, float] = {}
    for hit in hits:
        if hit.score > scores.get(hit.source, -np.inf):
            scores[hit.source] = hit.score
    return scores


def mode_index_bytes(
    modes: Sequence[str], *, store: Store, collection: str, dense_mode: str = "float",
    int8_bytes: Mapping[str, int] | None = None, reranker_bytes: int = 0,
) -> dict[str, dict[str, int]]:
    """What each mode searches, in bytes by part, from the store's sizes.

    ``dense-float32`` reads the float vectors (``halfvec``: 2 bytes a dimension);
    ``dense-binary`` the binary HNSW index (which holds the codes); ``dense-binary-rescore``
    both; ``dense-int8`` the FAISS binary index and int8 codes (``int8_bytes``); ``bm25``
    the postings and their index; ``hybrid`` BM25 plus its dense mode; ``hybrid+rerank``
    adds the reranker's weights (``reranker_bytes``).
    """
    sizes = store.index_bytes(collection)
    bm25 = {"bm25_postings": sizes["bm25_postings"], "bm25_index": sizes["bm25_index"]}
    dense = {
        "dense-float32": {"halfvec": sizes["halfvec"]},
        "dense-binary": {"bit_hnsw": sizes["bit_hnsw"]},
        "dense-binary-rescore": {"bit_hnsw": sizes["bit_hnsw"], "halfvec": sizes["halfvec"]},
        "dense-int8": dict(int8_bytes or {}),
    }
    hybrid_dense = {"float": "dense-float32", "binary": "dense-binary",
                    "binary-rescore": "dense-binary-rescore"}[dense_mode]
    hybrid = {**bm25, **dense[hybrid_dense]}
    every = {"bm25": bm25, **dense, "hybrid": hybrid,
             "hybrid+rerank": {**hybrid, "reranker_weights": reranker_bytes}}
    return {mode: every[mode] for mode in modes}


class FaissIndexLike(Protocol):
    """The parts of ``FaissAccelerator`` the int8 mode uses."""

    def search(self, collection: str, *, query: np.ndarray, top_k: int, oversample: int,
               rescore: Literal["int8", "float"] = "int8") -> list[Any]: ...


def faiss_int8_searcher(accelerator: FaissIndexLike, store: Store, *,
                        collection: str) -> Int8Searcher:
    """``dense-int8`` over the FAISS accelerator: binary candidates, int8 rescoring, then the
    chunks' rows (source, text) read from the store; both steps are timed."""

    def search(query: np.ndarray, *, top_k: int, oversample: int) -> list[ScoredChunk]:
        hits = accelerator.search(collection, query=query, top_k=top_k, oversample=oversample,
                                  rescore="int8")
        return store.fetch_hits(collection=collection, scores=[(h.chunk_id, h.score) for h in hits],
                                stage="dense_int8")

    return search
