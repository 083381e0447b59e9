"""The HTTP API over real backends: embedded Postgres, bundled embedder, local llama.cpp."""

from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from ingest.pipeline import IngestPipeline
from service.app import create_app
from tests.conftest import DOCS
from verity.answering.runtime import Runtime
from verity.backends.generators import OpenAIChatGenerator
from verity.backends.llama_server import free_port
from verity.core.settings import ChunkingSettings, LLMSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docs_collection(runtime: Runtime) -> str:
    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=ChunkingSettings())
    report = pipeline.run([DOCS], collection="docs-api-test")
    assert report.ok
    return "docs-api-test"


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime=runtime)) as c:
        yield c


def test_question_about_the_docs_gets_a_cited_answer(client: TestClient, docs_collection: str) -> None:
    r = client.post("/v1/query", json={"question": "How do I configure the database?",
                                       "collection": docs_collection})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "answered", body
    assert body["citations"], body["answer"]
    assert body["citations"][0]["document"] == "docs/configuration.md"
    given = {s["n"]: s for s in body["sources"]}
    for c in body["citations"]:
        assert given[c["n"]] == c and f"[{c['n']}]" in body["answer"]
    assert "dsn" in body["answer"].lower() or "postgres" in body["answer"].lower()
    assert set(body["timings"]) >= {"embed_ms", "dense_ms", "bm25_ms", "fusion_ms", "generate_ms",
                                    "total_ms"}
    assert body["usage"]["prompt_tokens"] > 0


def test_unrelated_question_abstains_with_closest_sources(
    client: TestClient, docs_collection: str
) -> None:
    r = client.post("/v1/query", json={"question": "Who painted the Mona Lisa?",
                                       "collection": docs_collection})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "abstained", body
    assert body["citations"] == [] and body["sources"]


def test_unknown_collection_is_404_in_the_error_schema(client: TestClient) -> None:
    r = client.post("/v1/query", json={"question": "hi", "collection": "nope"})
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize("body", [{}, {"question": ""}, {"question": "x", "top_k": 0},
                                  {"question": "x", "collection": "../etc"}])
def test_invalid_requests_are_422_without_internals(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/v1/query", json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["type"] == "invalid_request" and "Traceback" not in error["message"]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/query", {"question": "x", "filter": {"dept": "hr"}}),
    ("/v1/search", {"query": "x", "filter": {"dept": "hr"}}),
    ("/v1/collections", {"name": "misspelt", "embeder": "x"}),
])
def test_unknown_fields_are_refused_by_name(client: TestClient, path: str,
                                            body: dict[str, object]) -> None:
    """A misspelt "filter" must not silently return unfiltered results."""
    r = client.post(path, json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["type"] == "invalid_request"
    unknown = next(k for k in body if k not in {"question", "query", "name"})
    assert f"body.{unknown}" in error["message"] and "not permitted" in error["message"]


def test_the_openai_route_tolerates_openais_own_optional_fields(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={
        "model": "nope", "messages": [{"role": "user", "content": "hi"}],
        "presence_penalty": 0, "logit_bias": {}, "user": "someone", "n": 1})
    assert r.status_code == 404, r.text  # the unknown collection, not the extra fields


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and all(ready.json()["checks"].values())


def test_model_server_down_gives_sources_and_a_clear_status(
    runtime: Runtime, docs_collection: str
) -> None:
    dead = OpenAIChatGenerator(LLMSettings(model="m", timeout_s=5),
                               base_url=f"http://127.0.0.1:{free_port()}/v1")
    with TestClient(create_app(runtime.settings, runtime=replace(runtime, generator=dead))) as c:
        body = c.post("/v1/query", json={"question": "How do I configure the database?",
                                         "collection": docs_collection}).json()
        assert c.get("/readyz").status_code == 503
    assert body["status"] == "generation_unavailable"
    assert body["sources"] and body["citations"] == []


@pytest.mark.parametrize("mode", ["dense", "bm25"])
def test_retrieval_mode_is_chosen_per_request(client: TestClient, docs_collection: str,
                                              mode: str) -> None:
    r = client.post("/v1/query", json={"question": "Which variable sets the database URL?",
                                       "collection": docs_collection, "mode": mode, "top_k": 3})
    body = r.json()
    # top_k chunks retrieved; the local server's prompt limit may leave the last ones out.
    dropped = body["trace"]["context"]["sources_dropped"]
    assert r.status_code == 200 and body["sources"] and len(body["sources"]) + dropped == 3
    other = {"dense": "bm25_ms", "bm25": "dense_ms"}[mode]
    assert other not in body["timings"]
