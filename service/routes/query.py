from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

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

_ERRORS = {401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
           422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
           503: {"model": ErrorResponse}}


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


@router.post("/v1/query", response_model=QueryResponse, tags=["query"], responses=_ERRORS)
def query(request: QueryRequest, runtime: RuntimeDep, principal: PrincipalDep,
          metrics: MetricsDep) -> QueryResponse:
    """Answer a question from the documents the caller may read, with numbered citations."""
    return answering.answer_query(runtime, principal, request, metrics=metrics)


@router.post("/v1/search", response_model=SearchResponse, tags=["query"], responses=_ERRORS)
def search(request: SearchRequest, runtime: RuntimeDep, principal: PrincipalDep,
           metrics: MetricsDep) -> SearchResponse:
    """Ranked chunks the caller may read, with every stage's score and timing."""
    return answering.search(runtime, principal, request, metrics=metrics)
