"""Every failure of a backend reaches the client as its own error type, never as driver text.

The database is really lost, exhausted or stopped, the embedder really fails and
the reranker really cannot be reached; the text of the exception underneath is
in the server log with the request id, not in the response.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from service.app import create_app
from tests.helpers import ingest_texts, serve_app, sse_events
from verity.answering.runtime import Runtime
from verity.backends.embedders import SentenceTransformerEmbedder
from verity.backends.generators import OpenAIChatGenerator
from verity.backends.llama_server import free_port
from verity.backends.rerankers import RemoteRerankReranker
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.errors import LoaderError, RagError, RerankError
from verity.core.logs import JsonFormatter
from verity.core.settings import EmbedderSettings, LLMSettings, RerankSettings, StoreSettings

pytestmark = pytest.mark.integration

SEARCH = {"query": "when are the plants watered?", "collection": "nope"}
PLANTS = {"plants.md": "The office plants are watered every Tuesday by Sam, who also feeds the fish."}


def _app(runtime: Runtime, **backends: Any) -> FastAPI:
    """The real app over ``runtime`` with some backends replaced, auth off."""
    settings = runtime.settings.model_copy(update={"server": runtime.settings.server.model_copy(
        update={"auth": False})})
    return create_app(settings, runtime=replace(runtime, settings=settings, **backends))


def _client(runtime: Runtime, **backends: Any) -> TestClient:
    return TestClient(_app(runtime, **backends))


def _over(db: Database) -> dict[str, Any]:
    return {"db": db, "store": PgvectorStore(db)}


@contextmanager
def _tiny_database(database: Database, tmp_path: Path) -> Iterator[tuple[Database, str]]:
    """A one-connection pool with a one-second wait on the session's server, and its name there."""
    name = f"verity-test-{uuid.uuid4().hex[:8]}"
    settings = StoreSettings(dsn=SecretStr(make_conninfo(database.conninfo, application_name=name)),
                             pool_min_size=1, pool_max_size=1, pool_timeout_s=1)
    with Database(settings, data_dir=tmp_path) as db:
        yield db, name


def _logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(line) for line in caplog.text.splitlines() if line.startswith("{")]


def _assert_store_unavailable(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "store_unavailable"
    assert "retry" in r.json()["error"]["message"] and r.headers["retry-after"] == "5"
    for driver_text in ("psycopg", "Error", "connection", "terminating", "server closed"):
        assert driver_text not in r.text


def test_a_lost_database_connection_is_503_with_the_reason_in_the_log(
    retrieval_runtime: Runtime, database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.setFormatter(JsonFormatter())
    with _tiny_database(database, tmp_path) as (tiny, name), _client(retrieval_runtime,
                                                                     **_over(tiny)) as c:
        assert c.post("/v1/search", json=SEARCH).status_code == 404  # the pool's one connection works
        with psycopg.connect(database.conninfo, autocommit=True) as admin:
            killed = admin.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                                   "FROM pg_stat_activity WHERE application_name = %s",
                                   (name,)).fetchone()
        assert killed == (1,)
        with caplog.at_level(logging.WARNING):
            r = c.post("/v1/search", json=SEARCH, headers={"X-Request-ID": "lost-db-1"})
    _assert_store_unavailable(r)
    [failure] = [x for x in _logged(caplog) if x["message"].startswith("store_unavailable")]
    assert failure["request_id"] == "lost-db-1" and "psycopg" in failure["exc_info"]
    assert "terminating connection" in failure["exc_info"]
    assert "terminating connection" not in r.text


def test_an_exhausted_pool_is_503_on_search_and_query(
    retrieval_runtime: Runtime, database: Database, tmp_path: Path
) -> None:
    with _tiny_database(database, tmp_path) as (tiny, _), _client(retrieval_runtime,
                                                                  **_over(tiny)) as c:
        with tiny.pool.connection():  # the only connection is taken for the whole block
            search = c.post("/v1/search", json=SEARCH)
            query = c.post("/v1/query", json={"question": SEARCH["query"], "collection": "nope"})
        assert c.post("/v1/search", json=SEARCH).status_code == 404  # and free again
    _assert_store_unavailable(search)
    _assert_store_unavailable(query)


def _stop_postgres(pgdata: Path) -> None:
    """A fast shutdown of the embedded server (SIGINT to the postmaster), waiting until it exits."""
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    postmaster = psutil.Process(pid)
    os.kill(pid, signal.SIGINT)
    postmaster.wait(30)


def test_a_stopped_database_is_503_everywhere_the_query_path_reads_it(
    retrieval_runtime: Runtime, tmp_path: Path
) -> None:
    question = {"question": SEARCH["query"], "collection": "nope"}
    chat = {"model": "nope", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with Database(StoreSettings(pool_timeout_s=1), data_dir=tmp_path) as db, \
            _client(retrieval_runtime, **_over(db)) as c:
        assert c.get("/v1/collections").status_code == 200
        _stop_postgres(tmp_path / "postgres")
        answers = [c.post("/v1/search", json=SEARCH), c.post("/v1/query", json=question),
                   c.post("/v1/query", json={**question, "stream": True}),
                   c.get("/v1/collections"), c.get("/v1/documents"), c.get("/v1/models"),
                   c.post("/v1/chat/completions", json=chat)]
    for r in answers:
        _assert_store_unavailable(r)


def test_an_embedder_failure_is_503_without_its_text(
    retrieval_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    broken = SentenceTransformerEmbedder(EmbedderSettings(backend="torch"))
    broken.warm_up()
    broken.model.max_seq_length = 4096  # past MiniLM's 512 positions: a long query fails in torch
    caplog.handler.setFormatter(JsonFormatter())
    with _client(retrieval_runtime, embedder=broken) as c, caplog.at_level(logging.WARNING):
        r = c.post("/v1/search", json={**SEARCH, "query": "word " * 700},
                   headers={"X-Request-ID": "embed-1"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "embedder_unavailable", r.text
    [failure] = [x for x in _logged(caplog) if x["message"].startswith("embedder_unavailable")]
    assert failure["request_id"] == "embed-1"
    raw = failure["exc_info"].split("RuntimeError: ")[1].splitlines()[0]
    assert "512" in raw and raw not in r.text and "tensor" not in r.text


def test_an_unreachable_reranker_keeps_the_first_stage_order_and_says_so_in_the_log(
    retrieval_runtime: Runtime, collection: str, caplog: pytest.LogCaptureFixture
) -> None:
    ingest_texts(retrieval_runtime, collection, {
        **PLANTS, "desks.md": "Desks are booked a week ahead; the plants on them are Sam's.",
        "fish.md": "The fish tank is cleaned on Fridays."})
    search = {**SEARCH, "collection": collection, "top_k": 3}
    with _client(retrieval_runtime) as c:
        first = c.post("/v1/search", json=search).json()["results"]
    dead = RemoteRerankReranker(RerankSettings(kind="remote", url=f"http://127.0.0.1:{free_port()}/v1",
                                               timeout_s=2))
    caplog.handler.setFormatter(JsonFormatter())
    with _client(retrieval_runtime, reranker=dead) as c, caplog.at_level(logging.WARNING):
        r = c.post("/v1/search", json=search, headers={"X-Request-ID": "rerank-1"})
    assert r.status_code == 200, r.text
    assert [h["chunk_id"] for h in r.json()["results"]] == [h["chunk_id"] for h in first]
    assert all("rerank" not in h["scores"] for h in r.json()["results"])
    [warning] = [x for x in _logged(caplog) if x["message"].startswith("reranking failed")]
    assert warning["request_id"] == "rerank-1" and "ConnectError" in warning["exc_info"]


@pytest.mark.parametrize(("error", "status", "kind"), [
    (RerankError("the reranker failed; retry in a minute"), 503, "rerank_unavailable"),
    (LoaderError("not UTF-8 text (invalid byte at offset 3)"), 422, "unreadable_document"),
    (RagError("something we did not classify"), 500, "internal_error"),
])
def test_each_error_has_its_type_and_never_the_text_underneath(
    retrieval_runtime: Runtime, caplog: pytest.LogCaptureFixture, error: RagError, status: int,
    kind: str
) -> None:
    app = _app(retrieval_runtime)

    @app.get("/fail")
    def fail() -> None:
        try:
            raise OSError("secret internals")
        except OSError as e:
            raise error from e

    caplog.handler.setFormatter(JsonFormatter())
    with TestClient(app) as c, caplog.at_level(logging.INFO):
        r = c.get("/fail", headers={"X-Request-ID": "fail-1"})
    assert r.status_code == status and r.json()["error"]["type"] == kind
    assert "secret" not in r.text
    message = r.json()["error"]["message"]
    if kind == "internal_error":
        assert "fail-1" in message and str(error) not in message
    else:
        assert message == str(error)
    if status >= 500:
        [logged] = [x for x in _logged(caplog) if "exc_info" in x and x["logger"] == "service.errors"]
        assert logged["request_id"] == "fail-1" and "secret internals" in logged["exc_info"]


def _garbled_model_server() -> FastAPI:
    """An OpenAI-compatible chat server whose stream breaks off into bytes that are not JSON."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        token = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "Sam waters"},
                              "finish_reason": None}]}
        return StreamingResponse(iter([f"data: {json.dumps(token)}\n\n", "data: {garbled\n\n"]),
                                 media_type="text/event-stream")

    return app


def test_a_failure_mid_stream_is_the_streams_last_event_not_a_broken_connection(
    retrieval_runtime: Runtime, collection: str
) -> None:
    ingest_texts(retrieval_runtime, collection, PLANTS)
    question = {"question": "Who waters the office plants?", "collection": collection, "stream": True}
    chat = {"model": collection, "stream": True,
            "messages": [{"role": "user", "content": question["question"]}]}
    with serve_app(_garbled_model_server()) as url:
        model = OpenAIChatGenerator(LLMSettings(model="m", timeout_s=10), base_url=f"{url}/v1")
        with _client(retrieval_runtime, generator=model) as c:
            with c.stream("POST", "/v1/query", json=question, headers={"X-Request-ID": "s-1"}) as r:
                seen = list(sse_events(r.iter_lines()))
            with c.stream("POST", "/v1/chat/completions", json=chat) as r:
                chunks = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert seen[0] == ("token", {"text": "Sam waters"})
    kind, error = seen[-1]
    # A garbled event is the model server failing, said as such; the server's address, the
    # bytes it sent and the parser's exception stay in the log.
    assert kind == "error" and error["type"] == "generation_unavailable"
    assert "garbled" not in json.dumps(seen) and "JSONDecodeError" not in json.dumps(seen)
    assert url not in json.dumps(seen) and "127.0.0.1" not in json.dumps(seen)
    assert json.loads(chunks[-2])["error"]["type"] == "generation_unavailable"
    assert chunks[-1] == "[DONE]"
