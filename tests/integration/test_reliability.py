"""Concurrency faults under load: a saturated thread pool, shared tokenizers, leaked clients
and a child server that must not outlive its parent.

Real embedded Postgres and the bundled models; the only fake is a remote model server
that holds each answer, which we don't run ourselves.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi import FastAPI

from service.app import create_app
from tests.conftest import make_settings
from tests.helpers import ingest_texts, serve_app
from verity.answering.runtime import Runtime, open_runtime
from verity.backends.generators import OpenAIChatGenerator
from verity.backends.models import resolve_embedder
from verity.backends.rerankers import CrossEncoderReranker, RemoteRerankReranker
from verity.core.settings import BUNDLED_EMBEDDER, LLMSettings, RerankSettings
from verity.core.types import Chunk, ScoredChunk

pytestmark = pytest.mark.integration

PLANTS = {"plants.md": "The office plants are watered every Tuesday by Sam, who also feeds the fish."}
HOLD_S = 2.0


def _slow_model_server(hold_s: float) -> FastAPI:
    """An OpenAI-compatible chat server that holds each answer for ``hold_s`` seconds."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> dict[str, object]:
        await asyncio.sleep(hold_s)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Sam waters them [1]."}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


@contextmanager
def _service(runtime: Runtime, *, threads: int) -> Iterator[str]:
    """The real service with ``threads`` request threads, answering from a slow model server."""
    with serve_app(_slow_model_server(HOLD_S)) as model_url:
        generator = OpenAIChatGenerator(LLMSettings(model="m", timeout_s=30),
                                        base_url=f"{model_url}/v1")
        server = runtime.settings.server.model_copy(update={"auth": False, "threads": threads})
        settings = runtime.settings.model_copy(update={"server": server})
        app = create_app(settings, runtime=replace(runtime, settings=settings, generator=generator))
        with serve_app(app, lifespan="on") as url:
            yield url


def _ask_in_background(url: str, *, question: Mapping[str, object],
                       n: int) -> list[threading.Thread]:
    def ask() -> None:
        httpx.post(f"{url}/v1/query", json=question, timeout=60)

    threads = [threading.Thread(target=ask) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


@pytest.fixture
def question(retrieval_runtime: Runtime, collection: str) -> dict[str, str]:
    """A question whose answer is in a fresh collection."""
    ingest_texts(retrieval_runtime, collection, PLANTS)
    return {"question": "Who waters the office plants?", "collection": collection}


def test_healthz_answers_at_once_while_every_request_thread_waits_on_the_model(
    retrieval_runtime: Runtime, question: dict[str, str]
) -> None:
    with _service(retrieval_runtime, threads=2) as url:
        busy = _ask_in_background(url, question=question, n=4)
        time.sleep(0.5)  # every request thread is now waiting on the model server
        started = time.perf_counter()
        response = httpx.get(f"{url}/healthz", timeout=10)
        took = time.perf_counter() - started
        for t in busy:
            t.join()
    assert response.status_code == 200
    assert took < 0.1, f"/healthz took {took:.2f}s behind busy request threads"


def test_the_service_runs_as_many_blocking_requests_at_once_as_it_has_threads(
    retrieval_runtime: Runtime, question: dict[str, str]
) -> None:
    with _service(retrieval_runtime, threads=2) as url:
        started = time.perf_counter()
        for t in _ask_in_background(url, question=question, n=3):
            t.join()
        took = time.perf_counter() - started
    # Two threads: the third question waits for one of the first two to finish.
    assert took >= 2 * HOLD_S, f"3 questions on 2 threads took {took:.2f}s"


def test_the_default_pool_has_a_connection_for_every_request_thread(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    # The lexical index's poller and the ingestion worker borrow connections too.
    assert settings.store.pool_max_size >= settings.server.threads + 2


def _hits(n: int) -> list[ScoredChunk]:
    words = ["vitamin", "C", "deficiency", "causes", "scurvy", "in", "sailors", "on", "long",
             "voyages"]
    return [ScoredChunk(chunk=Chunk(id=f"c{i}", document_id=f"d{i}", ordinal=0,
                                    text=" ".join(words[: 2 + i % len(words)] * (1 + i % 7))),
                        score=0.0, source=f"d{i}.md", scores={"rrf": 0.0}) for i in range(n)]


def test_the_cross_encoder_reranks_from_many_threads_at_once_from_a_cold_start(
    data_dir: Path
) -> None:
    settings = RerankSettings(kind="cross-encoder", model=str(resolve_embedder(BUNDLED_EMBEDDER)),
                              batch_size=4)
    reranker = CrossEncoderReranker(settings, data_dir=data_dir)
    reranker.warm_up()  # loaded, but its tokenizer has not been configured by a first call yet
    hits = _hits(12)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []
    orders: list[list[str]] = []

    def rerank() -> None:
        barrier.wait()
        for _ in range(2):
            try:
                ranked = reranker.rerank("what causes scurvy?", hits, top_k=24)
            except Exception as e:  # collected and asserted on below
                errors.append(e)
            else:
                orders.append([h.chunk.id for h in ranked])

    threads = [threading.Thread(target=rerank) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = [h.chunk.id for h in reranker.rerank("what causes scurvy?", hits, top_k=12)]
    assert orders == [expected] * 12


def test_closing_the_runtime_closes_the_remote_rerankers_client(data_dir: Path) -> None:
    settings = make_settings(data_dir, rerank=RerankSettings(kind="remote",
                                                             url="http://127.0.0.1:9/v1"))
    with open_runtime(settings, generator=False) as runtime:
        reranker = runtime.reranker
        assert isinstance(reranker, RemoteRerankReranker)
        assert not reranker._client.is_closed
    assert reranker._client.is_closed


_PARENT = """\
import subprocess, sys, threading, time
from verity.backends.llama_server import die_with_parent
def spawn():
    child = subprocess.Popen(die_with_parent([sys.executable, "-m", "http.server", "0",
                                              "--bind", "127.0.0.1"]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(child.pid, flush=True)
thread = threading.Thread(target=spawn)
thread.start()
thread.join()  # the thread that spawned the child is gone; the child must stay
time.sleep(60)
"""


def _gone(pid: int, *, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_child_server_outlives_the_thread_that_spawned_it_but_not_its_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not _gone(child, within_s=1.5)
        parent.kill()
        parent.wait(5)
        assert _gone(child, within_s=5)
    finally:
        parent.kill()
        parent.wait(5)
