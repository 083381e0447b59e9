"""Glue between routes and the core pipeline."""

from __future__ import annotations

from core.runtime import Runtime
from service.protocol import QueryRequest, QueryResponse


def answer_query(runtime: Runtime, request: QueryRequest) -> QueryResponse:
    rag = runtime.rag()
    collection = request.collection or runtime.settings.collection
    overrides = {k: v for k, v in {"mode": request.mode, "fusion": request.fusion,
                                   "dense_weight": request.dense_weight}.items() if v is not None}
    settings = runtime.settings.retrieval.model_copy(update=overrides)
    answer = rag.answer(request.question, collection=collection, top_k=request.top_k,
                        settings=settings)
    return QueryResponse.of(answer)
