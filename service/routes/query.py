from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.answering import answer_query
from service.deps import RuntimeDep
from service.protocol import (
    ErrorResponse,
    HealthResponse,
    QueryRequest,
    QueryResponse,
    ReadyResponse,
)

router = APIRouter()


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


@router.post(
    "/v1/query", response_model=QueryResponse, tags=["query"],
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
               503: {"model": ErrorResponse}},
)
def query(request: QueryRequest, runtime: RuntimeDep) -> QueryResponse:
    """Answer a question from the documents, with numbered citations."""
    return answer_query(runtime, request)
