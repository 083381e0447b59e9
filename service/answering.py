"""Glue between routes and the core pipeline."""

from __future__ import annotations

from core.runtime import Runtime
from service.protocol import QueryRequest, QueryResponse


def answer_query(runtime: Runtime, request: QueryRequest) -> QueryResponse:
    rag = runtime.rag()
    collection = request.collection or runtime.settings.collection
    answer = rag.answer(request.question, collection=collection, top_k=request.top_k)
    return QueryResponse.of(answer)
