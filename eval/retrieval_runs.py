"""Orchestrating a retrieval evaluation: its configurations, checked before any work, then
searching either a running service (``/v1/search``) or the store in process.

In process, the corpus is ingested once per chunk size (through the caller's
:data:`eval.runs.Ingest`), and configurations that share a setup are searched together.

Example:
    >>> configs = retrieval_configs("bm25,hybrid", None, remote=False, depth=100, oversample=4)
    >>> with open_runtime(settings, generator=False, reranker=False) as runtime:
    ...     result = evaluate_in_process(runtime, data, "scifact", configs, depth=100,
    ...                                  oversample=4, ingest=ingest_corpus)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from eval.datasets import BeirDataset
from eval.matrix import EvalConfig, load_matrix
from eval.remote import MAX_TOP_K, SERVICE_MODES, ServiceClient, evaluate_remote_retrieval
from eval.retrieval import (
    METRICS,
    Int8Searcher,
    ModeResult,
    RerankSetup,
    RetrievalResult,
    check_setup,
    evaluate_retrieval,
    faiss_int8_searcher,
    mode_index_bytes,
    parse_modes,
)
from eval.runs import Ingest, chunk_collection, chunking_for
from verity.answering.runtime import Runtime
from verity.backends.rerankers import build_reranker
from verity.backends.stores.faiss_index import FaissAccelerator
from verity.core.errors import RagError
from verity.core.progress import ProgressReporter
from verity.core.settings import ChunkingSettings, Settings

DEFAULT_MODES = "dense-float32,dense-binary-rescore"
"""The modes of an in-process run that names none."""

Group = tuple[int | None, int, int]
"""What configurations searched together share: chunk size, depth and oversampling."""


def retrieval_configs(modes: str | None, matrix: Path | None, *, remote: bool, depth: int,
                      oversample: int) -> list[EvalConfig]:
    """The configurations of a run, from ``--modes`` or a matrix file, each checked.

    Raises:
        ValueError: both or a bad setup; the message names the configuration.
        MatrixError: the matrix file cannot be used.
    """
    if matrix is not None and modes is not None:
        raise ValueError("use --modes or --matrix, not both")
    if matrix is not None:
        configs = load_matrix(matrix)
    elif remote:
        names = [m.strip() for m in (modes or ",".join(SERVICE_MODES)).split(",") if m.strip()]
        configs = [EvalConfig(name=m, mode=m) for m in dict.fromkeys(names)]
    else:
        configs = [EvalConfig(name=m, mode=m) for m in parse_modes(modes or DEFAULT_MODES)]
    for c in configs:
        if remote:
            _check_service_config(c, depth=depth)
        else:
            if c.mode is None:
                raise ValueError(f"{c.name}: a retrieval configuration needs a mode")
            check_setup([c.mode], depth=c.depth or depth, oversample=c.oversample or oversample)
    return configs


def _check_service_config(c: EvalConfig, *, depth: int) -> None:
    if c.mode not in SERVICE_MODES:
        raise ValueError(f"{c.name}: with --url, mode must be one of {', '.join(SERVICE_MODES)}")
    if (c.top_k or c.depth or depth) > MAX_TOP_K:
        raise ValueError(f"{c.name}: /v1/search returns at most {MAX_TOP_K} hits; pass "
                         f"--depth {MAX_TOP_K} or less")
    if c.chunk_tokens or c.rerank or c.crag:
        raise ValueError(f"{c.name}: with --url only mode and top_k/depth can vary; the "
                         "service's own settings decide the rest")


def with_rerank(settings: Settings, *, top_n: int | None, fusion: str | None,
                weight: float | None) -> Settings:
    """``settings`` with the reranking of ``hybrid+rerank`` changed where a value is given.

    Raises:
        ValidationError: a value the rerank settings refuse.
    """
    update = {k: v for k, v in {"top_n": top_n, "fusion": fusion, "weight": weight}.items()
              if v is not None}
    rerank = type(settings.rerank).model_validate({**settings.rerank.model_dump(), **update})
    return settings.model_copy(update={"rerank": rerank})


def run_setup(configs: Sequence[EvalConfig], *, depth: int, oversample: int,
              chunking: ChunkingSettings) -> dict[str, Any]:
    """The setup a report records: each configuration's changes, depth, oversampling, chunking."""
    return {"configs": {c.name: c.changes() for c in configs}, "depth": depth,
            "oversample": oversample, "chunking": chunking.model_dump()}


def retrieval_metrics() -> tuple[str, ...]:
    """The metrics of every run: :data:`eval.retrieval.METRICS` and MAP."""
    return tuple(METRICS) if "map" in METRICS else (*METRICS, "map")


def evaluate_service(url: str, api_key: str | None, data: BeirDataset, collection: str,
                     configs: Sequence[EvalConfig], *, depth: int) -> RetrievalResult:
    """Search every judged query through the service at ``url``, for each configuration.

    Raises:
        ServiceError: the service failed or refused the key.
    """
    searches = [(c.name, c.mode, c.top_k or c.depth or min(depth, MAX_TOP_K)) for c in configs]
    with ServiceClient(url, api_key=api_key) as client, ProgressReporter(
            "search", unit="q", total=len(data.qrels) * len(configs)) as progress:
        return evaluate_remote_retrieval(
            client, queries=data.queries, qrels=data.qrels, collection=collection,
            configs=searches, metrics=retrieval_metrics(), progress=progress.advance)


def evaluate_in_process(runtime: Runtime, data: BeirDataset, collection: str,
                        configs: Sequence[EvalConfig], *, depth: int, oversample: int,
                        ingest: Ingest) -> RetrievalResult:
    """Ingest once per chunk size, then search each group of configurations that share a setup.

    Args:
        runtime: the store and embedder (no generator needed).
        data: the dataset; its corpus is what ``ingest`` puts into a collection.
        collection: the collection of configurations that keep the configured chunk size;
            one that re-chunks gets ``COLLECTION-cTOKENS``.
        configs: from :func:`retrieval_configs`.
        depth: chunks retrieved per query, where a configuration sets none.
        oversample: binary oversampling, where a configuration sets none.
        ingest: puts the corpus into a collection, chunked as given.

    Returns:
        One mode result per configuration, named after it, in the order given.
    """
    settings = runtime.settings
    modes: dict[str, ModeResult] = {}
    results: list[RetrievalResult] = []
    ingested: set[str] = set()
    rerank: tuple[RerankSetup, int] | None = None
    for (chunk_tokens, group_depth, group_oversample), group in _groups(
            configs, depth=depth, oversample=oversample).items():
        name = chunk_collection(collection, chunk_tokens)
        if name not in ingested:
            ingest(name, chunking_for(settings.chunking, chunk_tokens))
            ingested.add(name)
            _wait_lexical_index(runtime, name)
        group_modes = {c.mode for c in group}
        int8 = int8_searcher(runtime, name) if "dense-int8" in group_modes else (None, {})
        if "hybrid+rerank" in group_modes and rerank is None:
            rerank = rerank_setup(settings)
        for batch in ([group] if len(group_modes) == len(group) else [[c] for c in group]):
            result = _search_batch(runtime, data, name, batch, depth=group_depth,
                                   oversample=group_oversample, int8=int8, rerank=rerank)
            results.append(result)
            modes.update({c.name: replace(m, mode=c.name)
                          for c, m in zip(batch, result.modes, strict=True)})
    return RetrievalResult(
        collection=collection, model=runtime.embedder.name, depth=depth, oversample=oversample,
        embed_ms=next((r.embed_ms for r in results if r.embed_ms), {}),
        modes=[modes[c.name] for c in configs],
        settings=next((r.settings for r in results if r.settings), {}))


def _wait_lexical_index(runtime: Runtime, collection: str) -> None:
    """Wait until the tantivy and dense indexes hold every chunk ingested, so that no query of
    the run is answered by PostgreSQL's fallback instead.

    Raises:
        RagError: the index was not ready within ten minutes.
    """
    if runtime.lexical is not None and not runtime.lexical.wait_collection(
            tenant=runtime.store.tenant, collection=collection):
        raise RagError(f"the lexical index of {collection!r} was not ready within 10 minutes")
    if runtime.dense is not None and not runtime.dense.wait_collection(
            tenant=runtime.store.tenant, collection=collection):
        raise RagError(f"the dense index of {collection!r} was not ready within 10 minutes")


def _groups(configs: Sequence[EvalConfig], *, depth: int,
            oversample: int) -> dict[Group, list[EvalConfig]]:
    groups: dict[Group, list[EvalConfig]] = {}
    for c in configs:
        key = (c.chunk_tokens, c.depth or depth, c.oversample or oversample)
        groups.setdefault(key, []).append(c)
    return groups


def _search_batch(runtime: Runtime, data: BeirDataset, collection: str,
                  batch: Sequence[EvalConfig], *, depth: int, oversample: int,
                  int8: tuple[Int8Searcher | None, dict[str, int]],
                  rerank: tuple[RerankSetup, int] | None) -> RetrievalResult:
    """Search configurations with distinct modes in one pass over the queries."""
    settings = runtime.settings
    batch_modes = [str(c.mode) for c in batch]
    sizes = mode_index_bytes(batch_modes, store=runtime.store, collection=collection,
                             dense_mode=settings.retrieval.dense_mode, int8_bytes=int8[1],
                             reranker_bytes=rerank[1] if rerank else 0)
    return evaluate_retrieval(store=runtime.store, embedder=runtime.embedder,
                              queries=data.queries, qrels=data.qrels, collection=collection,
                              modes=batch_modes, depth=depth, oversample=oversample,
                              metrics=retrieval_metrics(), retrieval=settings.retrieval,
                              rerank=rerank[0] if rerank else None, int8=int8[0],
                              index_bytes=sizes)


def int8_searcher(runtime: Runtime, collection: str) -> tuple[Int8Searcher, dict[str, int]]:
    """The FAISS int8 searcher (the index loaded, or built and saved) and its sizes."""
    settings = runtime.settings
    accelerator = FaissAccelerator(runtime.db, data_dir=settings.data_dir, settings=settings.faiss)
    index, _ = accelerator.load_or_build(collection)
    sizes = {"faiss_binary": index.ram_bytes(), "int8_codes": int(index.codes.nbytes)}
    return faiss_int8_searcher(accelerator, runtime.store, collection=collection), sizes


def rerank_setup(settings: Settings) -> tuple[RerankSetup, int]:
    """The reranker of hybrid+rerank (the tuned cross-encoder when none is configured), loaded,
    and the bytes of its weights when it runs in process."""
    cfg = settings.rerank
    if cfg.kind == "none":
        cfg = cfg.model_copy(update={"kind": "cross-encoder"})
    reranker = build_reranker(cfg, data_dir=settings.data_dir, llm_base_url=settings.llm.base_url)
    assert reranker is not None
    getattr(reranker, "warm_up", lambda: None)()
    path = Path(getattr(reranker, "path", "")) if cfg.kind == "cross-encoder" else None
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors")) if path and path.is_dir() else 0
    return RerankSetup(reranker=reranker, top_n=cfg.top_n, fusion=cfg.fusion,
                       weight=cfg.weight), weights
