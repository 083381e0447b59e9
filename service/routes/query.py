from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from service import answering
from service.deps import MetricsDep, PrincipalDep, RuntimeDep
from service.protocol import (
    ErrorResponse,
    HealthResponse,
    QueryRequest,
    QueryResponse,
    ReadyResponse,
    SearchRequest,
    SearchResponse,
)

router = APIRouter()

# Every error a /v1 route can answer with; the OpenAPI schema must declare them all.
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "the body could not be parsed (not UTF-8 JSON)"),
        (401, "no key, or an invalid or revoked one"),
        (404, "the collection does not exist"),
        (413, "the body is over the size limit"),
        (422, "the body is not valid; the message names the field"),
        (429, "too many requests for this key; see Retry-After"),
        (503, "a backend (database, embedder) is down"),
    ]
}


@router.get("/healthz", response_model=HealthResponse, tags=["health"])
def healthz() -> HealthResponse:
    """The process is alive."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, tags=["health"],
            responses={503: {"model": ReadyResponse}})
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """The database, the embedder and the generator can all be reached."""
    checks = runtime.readiness()
    ready = all(checks.values())
    body = ReadyResponse(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.post("/v1/query", response_model=QueryResponse, tags=["query"],
             responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}})
def query(request: QueryRequest, runtime: RuntimeDep, principal: PrincipalDep,
          metrics: MetricsDep) -> QueryResponse | StreamingResponse:
    """Answer a question from the documents the caller may read, with numbered citations.

    With ``"stream": true`` the answer comes as server-sent events.
    """
    if not request.stream:
        return answering.answer_query(runtime, principal, request, metrics=metrics)
    rag, prepared = answering.prepare_query(runtime, principal, request)
    return StreamingResponse(answering.stream_query(rag, prepared, metrics=metrics),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/search", response_model=SearchResponse, tags=["query"], responses=_ERRORS)
def search(request: SearchRequest, runtime: RuntimeDep, principal: PrincipalDep,
           metrics: MetricsDep) -> SearchResponse:
    """Ranked chunks the caller may read, with every stage's score and timing."""
    return answering.search(runtime, principal, request, metrics=metrics)
