from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from service import answering
from service.deps import MetricsDep, PrincipalDep, RuntimeDep
from service.protocol import (
    HealthResponse,
    QueryRequest,
    QueryResponse,
    ReadyResponse,
    SearchRequest,
    SearchResponse,
    error_responses,
)

router = APIRouter()

_ERRORS = error_responses(400, 401, 404, 413, 422, 429, 503)


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
