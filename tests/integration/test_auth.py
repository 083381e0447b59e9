"""API keys, tenants, ACL groups and limits through the HTTP API, over real backends."""

from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from ingest.pipeline import IngestPipeline
from service.app import create_app
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.settings import ChunkingSettings
from verity.core.types import Document, Section

pytestmark = pytest.mark.integration

SECRET = "The 2025 salary band for staff engineers is 180,000 to 210,000 euros."
PUBLIC = "Engineers are reviewed twice a year; the salary review happens in March."


def _doc(source: str, text: str, groups: tuple[str, ...] = ()) -> Document:
    return Document(source=source, title=source, sections=(Section(text),),
                    content_hash=f"{source}-{len(text)}", acl_groups=groups)


@pytest.fixture(scope="module")
def tenants(runtime: Runtime) -> dict[str, str]:
    """Tenant 'acme' with a public and an HR-only document; tenant 'globex' with its own; keys."""
    for tenant, docs in {
        "acme": [_doc("handbook.md", PUBLIC), _doc("salaries.md", SECRET, groups=("hr",))],
        "globex": [_doc("globex.md", "Globex pays its engineers in gold bars.")],
    }.items():
        pipeline = IngestPipeline(store=PgvectorStore(runtime.db, tenant=tenant),
                                  embedder=runtime.embedder, chunking=ChunkingSettings())
        assert pipeline.ingest_documents(docs, collection="people").ok
    keys = ApiKeys(runtime.db)
    return {
        "acme-hr": keys.create(tenant="acme", groups=("hr",))[0],
        "acme-eng": keys.create(tenant="acme", groups=("engineering",))[0],
        "globex": keys.create(tenant="globex")[0],
        "acme-admin": keys.create(tenant="acme", is_admin=True)[0],
    }


def _app(runtime: Runtime, **server: object) -> TestClient:
    settings = runtime.settings.model_copy(update={"server": runtime.settings.server.model_copy(
        update={"auth": True, **server})})
    return TestClient(create_app(settings, runtime=replace(runtime, settings=settings)))


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with _app(runtime) as c:
        yield c


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", ["/v1/query", "/v1/search"])
def test_no_key_or_a_bad_key_is_401(client: TestClient, tenants: dict[str, str], path: str) -> None:
    body = {"question" if path == "/v1/query" else "query": "x", "collection": "people"}
    for headers in [{}, _auth("vk_not-a-real-key"), {"X-API-Key": "nope"}]:
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    ok = client.post(path, json=body, headers={"X-API-Key": tenants["acme-hr"]})
    assert ok.status_code == 200


def test_revoked_key_is_401(client: TestClient, runtime: Runtime) -> None:
    keys = ApiKeys(runtime.db)
    key, info = keys.create(tenant="acme")
    assert client.post("/v1/search", json={"query": "salary", "collection": "people"},
                       headers=_auth(key)).status_code == 200
    keys.revoke(info.id)
    assert client.post("/v1/search", json={"query": "salary", "collection": "people"},
                       headers=_auth(key)).status_code == 401


def test_other_tenants_collections_do_not_exist(client: TestClient, tenants: dict[str, str]) -> None:
    r = client.post("/v1/search", json={"query": "gold bars", "collection": "people"},
                    headers=_auth(tenants["acme-admin"]))
    assert "globex.md" not in {h["document"] for h in r.json()["results"]}
    r = client.post("/v1/search", json={"query": "salary", "collection": "people"},
                    headers=_auth(tenants["globex"]))
    assert {h["document"] for h in r.json()["results"]} == {"globex.md"}
    missing = client.post("/v1/search", json={"query": "x", "collection": "nothing-here"},
                          headers=_auth(tenants["globex"]))
    assert missing.status_code == 404


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_group_restricted_document_never_reaches_outsiders(
    client: TestClient, tenants: dict[str, str], mode: str
) -> None:
    body = {"query": "salary band for staff engineers", "collection": "people", "mode": mode,
            "top_k": 10}
    inside = client.post("/v1/search", json=body, headers=_auth(tenants["acme-hr"])).json()
    assert inside["results"][0]["document"] == "salaries.md"
    outside = client.post("/v1/search", json=body, headers=_auth(tenants["acme-eng"])).json()
    assert outside["results"] and all(
        h["document"] == "handbook.md" and "180,000" not in h["text"] for h in outside["results"])


def test_query_sources_respect_groups(client: TestClient, tenants: dict[str, str]) -> None:
    r = client.post("/v1/query", headers=_auth(tenants["acme-eng"]),
                    json={"question": "What is the salary band for staff engineers?",
                          "collection": "people"})
    body = r.json()
    assert r.status_code == 200
    assert "180" not in body["answer"] and "210" not in body["answer"]
    assert all(s["document"] == "handbook.md" for s in body["sources"])


def test_search_reports_stage_scores_and_timings(client: TestClient, tenants: dict[str, str]) -> None:
    r = client.post("/v1/search", headers=_auth(tenants["acme-hr"]),
                    json={"query": "salary review in March", "collection": "people"})
    body = r.json()
    top = body["results"][0]
    assert top["rank"] == 1 and top["document"] == "handbook.md"
    assert {"rrf", "bm25"} <= set(top["scores"]) and any(k.startswith("dense") for k in top["scores"])
    assert {"embed_ms", "dense_ms", "bm25_ms", "fusion_ms", "total_ms"} <= set(body["timings"])


def test_invalid_filters_are_422(client: TestClient, tenants: dict[str, str]) -> None:
    for filters in [{"year": {"between": [1, 2]}}, {"year": {"in": 3}}, {"year": {"gt": True}}]:
        r = client.post("/v1/search", headers=_auth(tenants["acme-hr"]),
                        json={"query": "x", "collection": "people", "filters": filters})
        assert r.status_code == 422, filters


def test_rate_limit_is_429_with_retry_after(runtime: Runtime, tenants: dict[str, str]) -> None:
    with _app(runtime, rate_limit_per_minute=2) as c:
        body = {"query": "salary", "collection": "people"}
        codes = [c.post("/v1/search", json=body, headers=_auth(tenants["globex"])).status_code
                 for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.post("/v1/search", json=body, headers=_auth(tenants["globex"]))
        assert r.json()["error"]["type"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        # Another key has its own bucket.
        assert c.post("/v1/search", json=body, headers=_auth(tenants["acme-hr"])).status_code == 200


def test_oversized_body_is_413(runtime: Runtime, tenants: dict[str, str]) -> None:
    with _app(runtime, max_body_mb=0.001) as c:
        r = c.post("/v1/search", json={"query": "x" * 5000, "collection": "people"},
                   headers=_auth(tenants["globex"]))
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"


def test_a_chunks_context_is_read_only_by_callers_who_could_retrieve_it(
    client: TestClient, tenants: dict[str, str]
) -> None:
    body = {"query": "salary band for staff engineers", "collection": "people", "top_k": 10}
    hits = client.post("/v1/search", json=body, headers=_auth(tenants["acme-hr"])).json()["results"]
    secret = next(h for h in hits if h["document"] == "salaries.md")
    path = f"/v1/chunks/{secret['chunk_id']}/context"
    seen = client.get(path, params={"window": 2}, headers=_auth(tenants["acme-hr"]))
    assert seen.status_code == 200
    context = seen.json()
    assert context["document"]["source"] == "salaries.md" and context["chunk_id"] == secret["chunk_id"]
    assert secret["chunk_id"] in [c["chunk_id"] for c in context["chunks"]]
    ordinals = [c["ordinal"] for c in context["chunks"]]
    assert ordinals == sorted(ordinals)
    # Another group of the tenant, another tenant, an unknown id: all the same 404.
    for key in ("acme-eng", "globex"):
        hidden = client.get(path, headers=_auth(tenants[key]))
        assert hidden.status_code == 404 and "180,000" not in hidden.text
    assert client.get("/v1/chunks/no-such-chunk/context",
                      headers=_auth(tenants["acme-hr"])).status_code == 404
    assert client.get(path).status_code == 401
