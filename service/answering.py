"""Glue between routes and the core pipeline: the caller's tenant, groups and options."""

from __future__ import annotations

import time

from core.auth import Principal
from core.rag import RagPipeline, Timer
from core.runtime import Runtime
from core.settings import RetrievalSettings
from core.types import SearchFilter
from service.metrics import Metrics
from service.protocol import (
    QueryRequest,
    QueryResponse,
    RetrievalOptions,
    SearchHit,
    SearchRequest,
    SearchResponse,
)


def _plan(runtime: Runtime, principal: Principal, options: RetrievalOptions
          ) -> tuple[RagPipeline, str, RetrievalSettings, SearchFilter]:
    overrides = {k: v for k, v in {"mode": options.mode, "fusion": options.fusion,
                                   "dense_weight": options.dense_weight,
                                   "widen": options.widen}.items() if v is not None}
    settings = runtime.settings.retrieval.model_copy(update=overrides)
    where = SearchFilter(conditions=options.conditions(), groups=principal.groups)
    collection = options.collection or runtime.settings.collection
    return runtime.rag(tenant=principal.tenant), collection, settings, where


def answer_query(runtime: Runtime, principal: Principal, request: QueryRequest, *,
                 metrics: Metrics | None = None) -> QueryResponse:
    rag, collection, settings, where = _plan(runtime, principal, request)
    answer = rag.answer(request.question, collection=collection, top_k=request.top_k,
                        settings=settings, where=where)
    if metrics is not None:
        metrics.observe_answer(status=answer.status, usage=answer.usage, timings=answer.timings)
    return QueryResponse.of(answer)


def search(runtime: Runtime, principal: Principal, request: SearchRequest, *,
           metrics: Metrics | None = None) -> SearchResponse:
    rag, collection, settings, where = _plan(runtime, principal, request)
    timer = Timer({})
    started = time.perf_counter()
    hits = rag.retrieve(request.query, collection=collection, top_k=request.top_k, timer=timer,
                        settings=settings, where=where)
    with timer.stage("widen_ms"):
        hits = rag.store.widen(hits, window=settings.widen)
    timer.timings["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
    if metrics is not None:
        metrics.observe_timings("search", timer.timings)
    return SearchResponse(results=[SearchHit.of(i, h) for i, h in enumerate(hits, start=1)],
                          timings=timer.timings)
