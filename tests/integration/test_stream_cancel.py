"""A reader who leaves mid-answer stops the model: the service closes the model's stream,
whether the answer was streamed or not, on /v1/query and on /v1/chat/completions. And a
full model queue refuses answers with 503 and Retry-After instead of queueing them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import replace

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from service.app import create_app
from tests.helpers import ingest_texts, serve_app
from verity.answering.runtime import Runtime
from verity.backends.generators import OpenAIChatGenerator
from verity.core.settings import LLMSettings, Settings

pytestmark = pytest.mark.integration

PLANTS = {"plants.md": "The office plants are watered every Tuesday by Sam, who also feeds the fish."}
TOKENS = 400


class SlowModel:
    """A deterministic OpenAI-compatible chat server writing one token every 10 ms.

    ``sent`` counts the tokens it wrote; ``closed`` is set when its stream ended,
    finished or cut off by the reader.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.closed = asyncio.Event()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self) -> StreamingResponse:
        return StreamingResponse(self._tokens(), media_type="text/event-stream")

    async def _tokens(self) -> AsyncIterator[str]:
        try:
            for _ in range(TOKENS):
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": "word "},
                                      "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                self.sent += 1
                await asyncio.sleep(0.01)
            yield "data: [DONE]\n\n"
        finally:
            self.closed.set()


@contextmanager
def _service(runtime: Runtime, collection: str, **llm: object) -> Iterator[tuple[str, SlowModel]]:
    """The real service, with ``llm`` settings, answering from a fresh :class:`SlowModel`."""
    ingest_texts(runtime, collection, PLANTS)
    model = SlowModel()
    with serve_app(model.app) as model_url:
        generator = OpenAIChatGenerator(LLMSettings(model="m", timeout_s=30),
                                        base_url=f"{model_url}/v1")
        settings: Settings = runtime.settings.model_copy(update={
            "server": runtime.settings.server.model_copy(update={"auth": False}),
            "llm": runtime.settings.llm.model_copy(update=llm)})
        app = create_app(settings, runtime=replace(runtime, settings=settings, generator=generator))
        with serve_app(app, lifespan="on") as url:
            yield url, model


def _stopped_early(model: SlowModel) -> bool:
    """Whether the model's stream ends within a few seconds, well before all its tokens."""
    deadline = time.monotonic() + 5
    while not model.closed.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    return model.closed.is_set() and model.sent < TOKENS / 2


def test_a_client_that_disconnects_before_a_whole_answer_stops_the_model(
    retrieval_runtime: Runtime, collection: str
) -> None:
    with _service(retrieval_runtime, collection) as (url, model):
        body = {"question": "Who waters the office plants?", "collection": collection,
                "crag": False}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/query", json=body, timeout=httpx.Timeout(30, read=1.0))
        assert _stopped_early(model), f"the model wrote {model.sent} tokens for a client who left"


def test_an_openai_client_that_disconnects_mid_stream_stops_the_model(
    retrieval_runtime: Runtime, collection: str
) -> None:
    with _service(retrieval_runtime, collection) as (url, model):
        body = {"model": collection, "stream": True,
                "messages": [{"role": "user", "content": "Who waters the office plants?"}]}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            assert '"content": "word "' in next(line for line in lines if "word" in line)
        assert _stopped_early(model), f"the model wrote {model.sent} tokens for a client who left"


def test_a_full_model_queue_answers_503_with_retry_after_and_serves_the_queued(
    retrieval_runtime: Runtime, collection: str
) -> None:
    with _service(retrieval_runtime, collection, concurrency=1, queue_depth=1) as (url, _):
        body = {"question": "Who waters the office plants?", "collection": collection,
                "crag": False}
        answers: list[httpx.Response] = []

        def ask() -> None:
            answers.append(httpx.post(f"{url}/v1/query", json=body, timeout=60))

        held = [threading.Thread(target=ask) for _ in range(2)]  # one answering, one waiting
        for t in held:
            t.start()
            time.sleep(0.5)
        refused = httpx.post(f"{url}/v1/query", json=body, timeout=60)
        streamed = httpx.post(f"{url}/v1/query", json={**body, "stream": True}, timeout=60)
        for t in held:
            t.join()
        after = httpx.post(f"{url}/v1/query", json=body, timeout=60)
    for r in (refused, streamed):
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_busy", r.text
        assert int(r.headers["Retry-After"]) >= 1
    # The fake model cites nothing, so its answers abstain; what matters is that it wrote them.
    for r in [*answers, after]:
        assert r.status_code == 200 and "generate_ms" in r.json()["timings"], r.text
    assert len(answers) == 2


def test_a_client_that_disconnects_mid_stream_stops_the_models_stream(
    retrieval_runtime: Runtime, collection: str
) -> None:
    ingest_texts(retrieval_runtime, collection, PLANTS)
    model = SlowModel()
    with serve_app(model.app) as model_url:
        generator = OpenAIChatGenerator(LLMSettings(model="m", timeout_s=30),
                                        base_url=f"{model_url}/v1")
        settings = retrieval_runtime.settings.model_copy(update={
            "server": retrieval_runtime.settings.server.model_copy(update={"auth": False})})
        app = create_app(settings, runtime=replace(retrieval_runtime, settings=settings,
                                                   generator=generator))
        app.state.runtime = replace(retrieval_runtime, settings=settings, generator=generator)
        with serve_app(app) as url:
            body = {"question": "Who waters the office plants?", "collection": collection,
                    "stream": True, "crag": False}
            with httpx.stream("POST", f"{url}/v1/query", json=body, timeout=30) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("event: ")) == "event: token"
            # The reader is gone: within a second or two the model's stream must end early.
            deadline = time.monotonic() + 5
            while not model.closed.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert model.closed.is_set(), "the model kept generating for a reader who left"
            assert model.sent < TOKENS / 2
