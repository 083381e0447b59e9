from __future__ import annotations

import threading

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from service import answering
from service.deps import MetricsDep, ModelQueueDep, PrincipalDep, RuntimeDep
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
async def healthz() -> HealthResponse:
    """The process is alive: answered on the event loop, never queued behind busy threads."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, tags=["health"],
            responses={503: {"model": ReadyResponse}})
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """The database, the embedder and the generator can all be reached."""
    checks = runtime.readiness()
    ready = all(checks.values())
    lag = runtime.lexical.lag() if runtime.lexical is not None else {}
    dense = runtime.dense.lag() if runtime.dense is not None else {}
    body = ReadyResponse(status="ready" if ready else "not_ready", checks=checks,
                         lexical_lag_s={k: None if v is None else v.seconds
                                        for k, v in lag.items()},
                         lexical_lag_changes={k: None if v is None else v.changes
                                              for k, v in lag.items()},
                         dense_lag_s={k: None if v is None else v.seconds
                                      for k, v in dense.items()},
                         dense_lag_changes={k: None if v is None else v.changes
                                            for k, v in dense.items()})
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.post("/v1/query", response_model=QueryResponse, tags=["query"],
             responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}})
def query(request: QueryRequest, runtime: RuntimeDep, principal: PrincipalDep,
          metrics: MetricsDep, queue: ModelQueueDep, http: Request
          ) -> QueryResponse | StreamingResponse:
    """Answer a question from the documents the caller may read, with numbered citations.

    With ``"stream": true`` the answer comes as server-sent events. A client that
    disconnects stops the model either way. When the model's queue is full the
    answer is refused with 503 ``model_busy`` and Retry-After.
    """
    if not request.stream:
        return answering.answer_query(runtime, principal, request, metrics=metrics, queue=queue,
                                      gone=answering.disconnect_probe(http))
    rag, prepared = answering.prepare_query(runtime, principal, request, queue=queue)
    slot = answering.admit(queue, rag, prepared, gone=answering.disconnect_probe(http))
    stop = threading.Event()
    events = answering.stream_query(rag, prepared, metrics=metrics, stop=stop)
    # The slot is given back when the stream ends, and at the latest after the response.
    return StreamingResponse(answering.until_disconnected(http, events, stop=stop, slot=slot),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(slot.release) if slot else None)


@router.post("/v1/search", response_model=SearchResponse, tags=["query"], responses=_ERRORS)
def search(request: SearchRequest, runtime: RuntimeDep, principal: PrincipalDep,
           metrics: MetricsDep) -> SearchResponse:
    """Ranked chunks the caller may read, with every stage's score and timing."""
    return answering.search(runtime, principal, request, metrics=metrics)
