"""OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from service import answering
from service.deps import ModelQueueDep, PrincipalDep, RuntimeDep
from service.errors import public_error
from service.openai_protocol import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    Usage,
)
from service.protocol import CitationModel, QueryRequest, QueryResponse, error_responses
from verity.answering.pipeline import Prepared, RagPipeline
from verity.core.errors import CancelledError, ConfigError
from verity.core.types import Answer

router = APIRouter(tags=["openai"])
_ERRORS = error_responses(400, 401, 404, 413, 422, 429, 503)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
def models(runtime: RuntimeDep, principal: PrincipalDep) -> ModelList:
    """The caller's collections, each usable as a model."""
    stats = runtime.rag(tenant=principal.tenant).store.stats()
    return ModelList(data=[ModelCard(id=s.name) for s in stats])


@router.post("/v1/chat/completions", response_model=ChatCompletion,
             responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}})
def chat_completions(request: ChatCompletionRequest, runtime: RuntimeDep,
                     principal: PrincipalDep, queue: ModelQueueDep,
                     http: Request) -> ChatCompletion | StreamingResponse:
    """A grounded answer from the collection named by ``model``, citations included.

    A client that disconnects stops the model; a full model queue is a 503 ``model_busy``.
    """
    question = request.question()
    if not question:
        raise ConfigError("messages need a user message with text")
    query = QueryRequest(question=question, collection=request.model)
    rag, prepared = answering.prepare_query(runtime, principal, query)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    gone = answering.disconnect_probe(http)
    slot = answering.admit(queue, rag, prepared, gone=gone)
    if request.stream:
        stop = threading.Event()
        chunks = _chunks(rag, prepared, completion_id, request.model, stop=stop)
        return StreamingResponse(answering.until_disconnected(http, chunks, stop=stop, slot=slot),
                                 media_type="text/event-stream",
                                 background=BackgroundTask(slot.release) if slot else None)
    try:
        answer = answering.complete_until_gone(rag, prepared, gone)
    finally:
        if slot is not None:
            slot.release()
    return completion(answer, completion_id=completion_id, model=request.model)


def message_text(answer: Answer) -> str:
    """The answer with a numbered source list, so plain clients see citations too."""
    if not answer.citations:
        return answer.text
    lines = [f"[{c.n}] {c.document}" + (f", page {c.page}" if c.page else "")
             for c in answer.citations]
    return answer.text + "\n\nSources:\n" + "\n".join(lines)


def completion(answer: Answer, *, completion_id: str, model: str) -> ChatCompletion:
    wire = QueryResponse.of(answer)
    prompt, done = answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0)
    return ChatCompletion(
        id=completion_id, created=int(time.time()), model=model,
        choices=[ChatChoice(message=ChatChoiceMessage(content=message_text(answer)))],
        usage=Usage(prompt_tokens=prompt, completion_tokens=done, total_tokens=prompt + done),
        citations=wire.citations,
        verity=wire.model_dump(include={"status", "sources", "invalid_citations", "timings",
                                        "trace"}),
    )


def _chunks(rag: RagPipeline, prepared: Prepared, completion_id: str, model: str, *,
            stop: threading.Event) -> Iterator[str]:
    """The answer as OpenAI chunks; once ``stop`` is set, the model's stream is closed."""
    created = int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None, **extra: object) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    items = rag.stream(prepared)
    try:
        for item in items:
            if stop.is_set():
                raise CancelledError("the client went away")
            if isinstance(item, str):
                yield chunk({"content": item})
                continue
            cited = [CitationModel.of(c).model_dump() for c in item.citations]
            footer = message_text(item)[len(item.text):]
            yield chunk({"content": footer} if footer else {}, "stop", citations=cited,
                        verity={"status": item.status, "answer": item.text})
    except CancelledError:
        return
    except Exception as e:  # the response has started: the error can only be a chunk
        _, kind, message = public_error(e)
        yield f"data: {json.dumps({'error': {'type': kind, 'message': message}})}\n\n"
    finally:
        answering.close_stream(items)  # closes the model's stream: the server stops generating
    yield "data: [DONE]\n\n"
