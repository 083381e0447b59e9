"""Glue between routes and the core pipeline: the caller's tenant, groups and options."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import anyio.from_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.errors import public_error
from service.limits import ModelQueue, Slot
from service.metrics import Metrics
from service.protocol import (
    QueryRequest,
    QueryResponse,
    RetrievalOptions,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from verity.answering.crag import CorrectiveRag
from verity.answering.followup import standalone_question
from verity.answering.pipeline import UNAVAILABLE_TEXT, Prepared, RagPipeline, Timer
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import Principal
from verity.core.errors import CancelledError, GenerationError
from verity.core.settings import RetrievalSettings
from verity.core.types import Answer, SearchFilter, Turn


def _plan(runtime: Runtime, principal: Principal, options: RetrievalOptions
          ) -> tuple[RagPipeline, str, RetrievalSettings, SearchFilter]:
    overrides = {k: v for k, v in {"mode": options.mode, "fusion": options.fusion,
                                   "dense_weight": options.dense_weight,
                                   "widen": options.widen}.items() if v is not None}
    settings = runtime.settings.retrieval.model_copy(update=overrides)
    where = SearchFilter(conditions=options.conditions(), groups=principal.groups)
    collection = options.collection or runtime.settings.collection
    return runtime.rag(tenant=principal.tenant), collection, settings, where


def prepare_query(runtime: Runtime, principal: Principal, request: QueryRequest, *,
                  queue: ModelQueue | None = None) -> tuple[RagPipeline, Prepared]:
    """Retrieve (and with CRAG, grade and correct) the sources for a question.

    A follow-up (a request with ``history``) is first rewritten into a standalone question,
    which retrieval and the answer then use; the trace's ``conversation`` shows the rewrite.
    The rewrite is a model call, so it waits for a slot of ``queue`` like an answer does.

    Raises:
        BusyError: a follow-up's rewrite found ``queue`` full.
    """
    rag, collection, settings, where = _plan(runtime, principal, request)
    started = time.perf_counter()
    slot = queue.acquire() if queue is not None and request.history and rag.generator else None
    try:
        standalone = standalone_question(
            request.question,
            [Turn(question=t.question, answer=t.answer) for t in request.history],
            generator=rag.generator, prompts=rag.prompts, vault=rag.vault_for(collection))
    finally:
        if slot is not None:
            slot.release()
    use_crag = runtime.settings.crag.enabled if request.crag is None else request.crag
    if use_crag:
        crag = CorrectiveRag(rag, runtime.settings.crag, runtime.connectors)
        prepared = crag.prepare(standalone.question, collection=collection, top_k=request.top_k,
                                where=where, retrieval=settings)
    else:
        prepared = rag.prepare(standalone.question, collection=collection, top_k=request.top_k,
                               settings=settings, where=where)
    if standalone.trace:
        elapsed = time.perf_counter() - started
        prepared.timer.timings["condense_ms"] = round(elapsed * 1000, 2)
        prepared.started -= elapsed  # the total includes the rewrite
        prepared.trace["conversation"] = standalone.trace
        for key, n in standalone.usage.items():
            prepared.usage[key] = prepared.usage.get(key, 0) + n
    return rag, prepared


def answer_query(runtime: Runtime, principal: Principal, request: QueryRequest, *,
                 metrics: Metrics | None = None, queue: ModelQueue | None = None,
                 gone: Callable[[], bool] | None = None) -> QueryResponse:
    """The whole answer at once, generated in a slot of ``queue``.

    With ``gone`` (asked between tokens whether the client left) the model's
    answer is streamed and its stream closed as soon as the client is gone.

    Raises:
        BusyError: ``queue`` is full (503 with Retry-After).
        CancelledError: ``gone`` said the client left; the model stopped generating.
    """
    rag, prepared = prepare_query(runtime, principal, request, queue=queue)
    slot = admit(queue, rag, prepared, gone=gone)
    try:
        answer = rag.complete(prepared) if gone is None else complete_until_gone(
            rag, prepared, gone)
    finally:
        if slot is not None:
            slot.release()
    _observe(metrics, answer)
    return QueryResponse.of(answer)


def admit(queue: ModelQueue | None, rag: RagPipeline, prepared: Prepared, *,
          gone: Callable[[], bool] | None = None) -> Slot | None:
    """A slot of ``queue`` when the answer needs the model (None when it does not).

    Raises:
        BusyError: the queue is full.
        CancelledError: ``gone`` said the client left while it waited.
    """
    if queue is None or prepared.abstain or rag.generator is None:
        return None
    return queue.acquire(gone=gone)


def complete_until_gone(rag: RagPipeline, prepared: Prepared, gone: Callable[[], bool]) -> Answer:
    """``rag.complete(prepared)`` through the model's stream, closed once ``gone()`` is true.

    Raises:
        CancelledError: the client left before the answer was complete.
    """
    if prepared.abstain or rag.generator is None:
        return rag.complete(prepared)
    items = rag.stream(prepared)
    try:
        for item in items:
            if not isinstance(item, str):
                return item
            if gone():
                raise CancelledError("the client went away; generation stopped")
    except GenerationError:  # as rag.complete does: the sources without an answer
        return prepared.finish(Answer(UNAVAILABLE_TEXT, "generation_unavailable", (),
                                      tuple(prepared.sources)))
    finally:
        close_stream(items)  # closes the model's stream: the server stops generating
    raise CancelledError("the answer stream ended early")


def disconnect_probe(http: Request) -> Callable[[], bool]:
    """For a sync route's worker thread: whether its client has gone, asked on the event loop."""
    def gone() -> bool:
        return bool(anyio.from_thread.run(http.is_disconnected))

    return gone


def stream_query(rag: RagPipeline, prepared: Prepared, *, metrics: Metrics | None = None,
                 stop: threading.Event | None = None) -> Iterator[str]:
    """Server-sent events: ``token`` deltas, then ``citations``, ``trace`` and ``done``.

    If anything fails mid-stream (the model server, the database) the stream ends
    with an ``error`` event of the same type and message as the error response.
    Once ``stop`` is set the stream ends at the next token and closes the model's
    stream, so the model server stops generating.
    """
    try:
        items = rag.stream(prepared)
        try:
            yield from _events(items, metrics=metrics, stop=stop)
        finally:
            close_stream(items)
    except Exception as e:  # the response has started: the error can only be an event
        _, kind, message = public_error(e)
        yield sse("error", {"type": kind, "message": message})


def _events(items: Iterator[str | Answer], *, metrics: Metrics | None,
            stop: threading.Event | None) -> Iterator[str]:
    for item in items:
        if stop is not None and stop.is_set():
            return
        if isinstance(item, str):
            yield sse("token", {"text": item})
            continue
        _observe(metrics, item)
        final = QueryResponse.of(item)
        yield sse("citations", final.model_dump(include={
            "answer", "status", "citations", "sources", "invalid_citations"}))
        yield sse("trace", final.model_dump(include={"timings", "usage", "trace"}))
        yield sse("done", {})


async def until_disconnected(request: Request, events: Iterator[str], *, stop: threading.Event,
                             slot: Slot | None = None) -> AsyncIterator[str]:
    """``events``, pulled in a worker thread, until the client goes away.

    A reader who left (the page's Stop button, a closed tab) must not keep the model
    generating: the events stop, ``stop`` is set for a pull still running in its
    thread, and the stream is closed, which closes the model server's stream. Then the
    model ``slot`` is given back.
    """
    try:
        while not await request.is_disconnected():
            event = await run_in_threadpool(next, events, None)
            if event is None:
                return
            yield event
    finally:
        stop.set()
        close_stream(events)
        if slot is not None:
            slot.release()


def close_stream(events: Iterator[object]) -> None:
    """Close a generator (and so the model stream inside it), unless it is running elsewhere."""
    close = getattr(events, "close", None)
    try:
        if close is not None:
            close()
    except ValueError:
        pass  # still running in its thread: it sees ``stop`` at its next token and closes then


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
