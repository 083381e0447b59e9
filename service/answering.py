"""Glue between routes and the core pipeline: the caller's tenant, groups and options."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from core.auth import Principal
from core.crag import CorrectiveRag
from core.errors import GenerationError
from core.rag import Prepared, RagPipeline, Timer
from core.runtime import Runtime
from core.settings import RetrievalSettings
from core.types import Answer, SearchFilter
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


def prepare_query(runtime: Runtime, principal: Principal, request: QueryRequest
                  ) -> tuple[RagPipeline, Prepared]:
    """Retrieve (and with CRAG, grade and correct) the sources for a question."""
    rag, collection, settings, where = _plan(runtime, principal, request)
    use_crag = runtime.settings.crag.enabled if request.crag is None else request.crag
    if use_crag:
        crag = CorrectiveRag(rag, runtime.settings.crag, runtime.connectors)
        return rag, crag.prepare(request.question, collection=collection, top_k=request.top_k,
                                 where=where, retrieval=settings)
    return rag, rag.prepare(request.question, collection=collection, top_k=request.top_k,
                            settings=settings, where=where)


def answer_query(runtime: Runtime, principal: Principal, request: QueryRequest, *,
                 metrics: Metrics | None = None) -> QueryResponse:
    rag, prepared = prepare_query(runtime, principal, request)
    answer = rag.complete(prepared)
    _observe(metrics, answer)
    return QueryResponse.of(answer)


def stream_query(rag: RagPipeline, prepared: Prepared, *, metrics: Metrics | None = None
                 ) -> Iterator[str]:
    """Server-sent events: ``token`` deltas, then ``citations``, ``trace`` and ``done``.

    If the model server fails mid-stream the stream ends with an ``error`` event.
    """
    try:
        for item in rag.stream(prepared):
            if isinstance(item, str):
                yield sse("token", {"text": item})
                continue
            _observe(metrics, item)
            final = QueryResponse.of(item)
            yield sse("citations", final.model_dump(include={
                "answer", "status", "citations", "sources", "invalid_citations"}))
            yield sse("trace", final.model_dump(include={"timings", "usage", "trace"}))
            yield sse("done", {})
    except GenerationError as e:
        yield sse("error", {"type": "generation_unavailable", "message": str(e)})


def _observe(metrics: Metrics | None, answer: Answer) -> None:
    if metrics is not None:
        metrics.observe_answer(status=answer.status, usage=answer.usage, timings=answer.timings,
                               action=str(answer.trace.get("action", "")))


def sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


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
