"""Request ids, JSON access logs and Prometheus metrics of the HTTP API (API keys on)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ingest.pipeline import IngestPipeline
from service.app import create_app
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.logs import JsonFormatter
from verity.core.settings import ChunkingSettings
from verity.core.types import Document, Section

pytestmark = pytest.mark.integration

TENANT = "telemetry"


def _app(runtime: Runtime, **server: object) -> TestClient:
    settings = runtime.settings.model_copy(update={"server": runtime.settings.server.model_copy(
        update={"auth": True, **server})})
    return TestClient(create_app(settings, runtime=replace(runtime, settings=settings)))


@pytest.fixture(scope="module")
def key(retrieval_runtime: Runtime) -> str:
    pipeline = IngestPipeline(store=PgvectorStore(retrieval_runtime.db, tenant=TENANT),
                              embedder=retrieval_runtime.embedder, chunking=ChunkingSettings())
    doc = Document(source="plants.md", title="Plants", content_hash="plants-1",
                   sections=(Section("The office plants are watered every Tuesday by Sam."),))
    assert pipeline.ingest_documents([doc], collection="office").ok
    return ApiKeys(retrieval_runtime.db).create(tenant=TENANT, is_admin=True)[0]


@pytest.fixture
def client(retrieval_runtime: Runtime) -> Iterator[TestClient]:
    """A fresh app per test: each has its own metrics registry."""
    with _app(retrieval_runtime) as c:
        yield c


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text output, or None."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return None


def test_metrics_count_requests_stages_answers_and_jobs(client: TestClient, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    client.get("/healthz")
    for _ in range(2):
        assert client.post("/v1/search", headers=auth,
                           json={"query": "who waters the plants", "collection": "office"}
                           ).status_code == 200
    answer = client.post("/v1/query", headers=auth,
                         json={"question": "Who waters the office plants?", "collection": "office"})
    assert client.post("/v1/search", json={"query": "x"}).status_code == 401
    assert client.post("/v1/documents", headers=auth, data={"collection": "office-uploads"},
                       files=[("files", ("a.txt", b"x"))]).status_code == 202
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text

    assert _sample(text, "verity_http_requests_total", method="POST", route="/v1/search",
                   status="200") == 2
    assert _sample(text, "verity_http_requests_total", route="/v1/search", status="401") == 1
    assert _sample(text, "verity_http_requests_total", route="/healthz", status="200") == 1
    assert _sample(text, "verity_http_request_duration_seconds_count", route="/v1/search",
                   status="200") == 2
    for stage in ("embed", "dense", "bm25", "fusion", "total"):
        assert _sample(text, "verity_stage_duration_seconds_count", operation="search",
                       stage=stage) == 2, stage
    # No generator in this runtime: the answer is generation_unavailable, and counted.
    status = answer.json()["status"]
    assert _sample(text, "verity_answers_total", status=status) == 1
    assert _sample(text, "verity_stage_duration_seconds_count", operation="query",
                   stage="embed") == 1
    assert _sample(text, "verity_llm_tokens_total", kind="prompt") is not None
    assert _sample(text, "verity_ingest_jobs_enqueued_total") == 1
    assert _sample(text, "verity_ingest_files_enqueued_total") == 1
    assert (_sample(text, "verity_ingest_jobs", status="queued") or 0) >= 1
    assert TENANT not in text


def test_each_app_has_its_own_registry(retrieval_runtime: Runtime) -> None:
    with _app(retrieval_runtime) as first, _app(retrieval_runtime) as second:
        first.get("/healthz")
        assert _sample(first.get("/metrics").text, "verity_http_requests_total",
                       route="/healthz") == 1
        assert _sample(second.get("/metrics").text, "verity_http_requests_total",
                       route="/healthz") is None


def test_metrics_can_be_turned_off(retrieval_runtime: Runtime) -> None:
    with _app(retrieval_runtime, metrics=False) as c:
        assert c.get("/metrics").status_code == 404


def test_request_id_round_trips_and_one_json_access_line_is_logged(
    client: TestClient, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.setFormatter(JsonFormatter())
    with caplog.at_level(logging.INFO, logger="verity.access"):
        r = client.post("/v1/search", json={"query": "plants", "collection": "office"},
                        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "req-42.a"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42.a"
    lines = [json.loads(line) for line in caplog.text.splitlines()]
    [line] = [x for x in lines if x["logger"] == "verity.access"]
    assert line["request_id"] == "req-42.a" and line["tenant"] == TENANT
    assert line["method"] == "POST" and line["path"] == "/v1/search" and line["status"] == 200
    assert line["route"] == "/v1/search" and line["ms"] >= 0 and line["level"] == "INFO"


def test_a_request_id_is_made_when_none_or_an_unsafe_one_is_sent(client: TestClient) -> None:
    made = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    unsafe = client.get("/healthz", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"]
    assert unsafe != "a b\tc" and re.fullmatch(r"[0-9a-f]{32}", unsafe)
    assert client.get("/healthz").headers["x-request-id"] != made


def test_errors_carry_the_request_id(retrieval_runtime: Runtime, caplog: pytest.LogCaptureFixture
                                     ) -> None:
    app = _app(retrieval_runtime).app
    assert isinstance(app, FastAPI)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    caplog.handler.setFormatter(JsonFormatter())
    with TestClient(app) as c, caplog.at_level(logging.INFO):
        r = c.get("/boom", headers={"X-Request-ID": "boom-1"})
        refused = c.post("/v1/search", json={"query": "x", "collection": "nope"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "boom-1"
    assert r.json()["error"]["type"] == "internal_error" and "secret" not in r.text
    assert "boom-1" in r.json()["error"]["message"]
    assert refused.status_code == 401 and refused.headers["x-request-id"]
    logged = [json.loads(line) for line in caplog.text.splitlines() if line.startswith("{")]
    [error] = [x for x in logged if x["message"] == "unhandled error"]
    assert error["request_id"] == "boom-1" and "secret internals" in error["exc_info"]
    assert any(x.get("status") == 500 and x["request_id"] == "boom-1" for x in logged)


def test_otel_without_its_packages_is_a_warning_not_a_failure(
    retrieval_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        import opentelemetry.instrumentation.fastapi  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("opentelemetry-instrumentation-fastapi is installed")
    with caplog.at_level(logging.WARNING), _app(retrieval_runtime, otel=True) as c:
        assert c.get("/healthz").status_code == 200
    assert "opentelemetry-instrumentation-fastapi" in caplog.text
