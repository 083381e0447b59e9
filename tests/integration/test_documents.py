"""Documents, ingestion jobs and collections through the HTTP API, with API keys on.

Uploads are queued by the service and ingested by a real ``IngestWorker`` over
the embedded Postgres and the bundled embedder; nothing is mocked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ingest.worker import NOTHING_INGESTED, IngestWorker
from tests.clients import keyed_client
from tests.helpers import make_pdf
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys
from verity.core.settings import WorkerSettings

pytestmark = pytest.mark.integration

ESPRESSO = b"# Espresso machine\n\nThe espresso machine on floor 3 is descaled every 200 cups."
BACKUPS = b"Backups of the file server run nightly at 02:00 and are kept for 30 days."
SALARIES = b"The 2025 salary band for staff engineers is 180,000 to 210,000 euros."


@dataclass(frozen=True)
class Tenant:
    name: str
    admin: str
    hr: str
    eng: str


def _tenant(runtime: Runtime) -> Tenant:
    name = f"tenant-{uuid.uuid4().hex[:8]}"
    keys = ApiKeys(runtime.db)
    return Tenant(name=name, admin=keys.create(tenant=name, is_admin=True)[0],
                  hr=keys.create(tenant=name, groups=("hr",))[0],
                  eng=keys.create(tenant=name, groups=("engineering",))[0])


@pytest.fixture(scope="module")
def acme(retrieval_runtime: Runtime) -> Tenant:
    return _tenant(retrieval_runtime)


@pytest.fixture(scope="module")
def globex(retrieval_runtime: Runtime) -> Tenant:
    return _tenant(retrieval_runtime)


@pytest.fixture(scope="module")
def client(retrieval_runtime: Runtime) -> Iterator[TestClient]:
    with keyed_client(retrieval_runtime) as c:
        yield c


@pytest.fixture(scope="module")
def worker(retrieval_runtime: Runtime) -> Iterator[IngestWorker]:
    w = IngestWorker(db=retrieval_runtime.db, embedder=retrieval_runtime.embedder,
                     chunking=retrieval_runtime.settings.chunking,
                     settings=WorkerSettings(poll_interval_s=0.1))
    yield w
    w.run_pending()  # leave no queued job to other test modules


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload(client: TestClient, key: str, collection: str, files: dict[str, bytes],
            **form: str) -> str:
    r = client.post("/v1/documents", headers=_auth(key), data={"collection": collection, **form},
                    files=[("files", (name, data)) for name, data in files.items()])
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _ingest(client: TestClient, worker: IngestWorker, key: str, collection: str,
            files: dict[str, bytes], **form: str) -> dict[str, Any]:
    job_id = _upload(client, key, collection, files, **form)
    worker.run_pending()
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=_auth(key)).json()
    return job


def _sources(client: TestClient, key: str, collection: str, **params: str | int) -> list[str]:
    r = client.get("/v1/documents", headers=_auth(key), params={"collection": collection, **params})
    assert r.status_code == 200, r.text
    return [d["source"] for d in r.json()["documents"]]


def test_upload_is_queued_then_ingested_and_searchable(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    job_id = _upload(client, acme.admin, collection, {"espresso.md": ESPRESSO, "backups.txt": BACKUPS},
                     metadata=json.dumps({"dept": "facilities"}))
    queued = client.get(f"/v1/jobs/{job_id}", headers=_auth(acme.admin)).json()
    assert queued["status"] == "queued" and queued["progress"]["files_total"] == 2

    assert worker.run_pending() >= 1
    done = client.get(f"/v1/jobs/{job_id}", headers=_auth(acme.admin)).json()
    assert done["status"] == "done", done
    assert done["progress"]["files_done"] == 2 and done["progress"]["chunks_written"] >= 2
    assert done["failures"] == [] and done["error"] is None and done["finished_at"]

    r = client.post("/v1/search", headers=_auth(acme.eng),
                    json={"query": "how often is the espresso machine descaled",
                          "collection": collection, "filters": {"dept": "facilities"}})
    assert r.status_code == 200 and r.json()["results"][0]["document"] == "espresso.md"
    listed = client.get("/v1/documents", headers=_auth(acme.eng),
                        params={"collection": collection}).json()
    assert listed["total"] == 2 and [d["source"] for d in listed["documents"]] == [
        "backups.txt", "espresso.md"]
    top = listed["documents"][1]
    assert top["title"] == "Espresso machine" and top["metadata"] == {"dept": "facilities"}
    assert top["chunk_count"] >= 1 and top["groups"] == [] and top["ingested_at"]


def test_broken_and_unsupported_files_are_per_file_failures(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    job = _ingest(client, worker, acme.admin, collection, {
        "good.pdf": make_pdf(["Parking permits are renewed every January."]),
        "broken.pdf": b"%PDF-1.4 this is not really a pdf",
        "photo.png": b"\x89PNG\r\n\x1a\n\x00\x00",
        "empty.txt": b"   ",
        "latin1.txt": "caf\xe9".encode("latin-1"),
    })
    assert job["status"] == "done", job
    assert job["progress"]["files_done"] == 5
    reasons = {f["file"]: f["reason"] for f in job["failures"]}
    assert set(reasons) == {"broken.pdf", "photo.png", "empty.txt", "latin1.txt"}
    assert "unsupported file type '.png'" in reasons["photo.png"]
    assert "Traceback" not in json.dumps(job)
    assert _sources(client, acme.admin, collection) == ["good.pdf"]


def test_a_job_where_no_file_can_be_read_fails(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    job = _ingest(client, worker, acme.admin, collection, {"a.docx": b"PK\x03\x04"})
    assert job["status"] == "failed" and job["error"] == NOTHING_INGESTED
    assert [f["file"] for f in job["failures"]] == ["a.docx"]


def test_reupload_with_other_groups_updates_the_document(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    _ingest(client, worker, acme.admin, collection, {"pay.md": SALARIES})
    assert _sources(client, acme.eng, collection) == ["pay.md"]
    job = _ingest(client, worker, acme.admin, collection, {"pay.md": SALARIES}, groups="hr")
    assert job["status"] == "done"
    assert _sources(client, acme.eng, collection) == []
    assert _sources(client, acme.hr, collection) == ["pay.md"]


def test_group_restricted_documents_are_not_listed_or_counted_for_outsiders(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    _ingest(client, worker, acme.admin, collection, {"salaries.md": SALARIES}, groups="hr, finance")
    _ingest(client, worker, acme.admin, collection, {"backups.txt": BACKUPS})
    assert _sources(client, acme.hr, collection) == ["backups.txt", "salaries.md"]
    assert _sources(client, acme.admin, collection) == ["backups.txt", "salaries.md"]
    assert _sources(client, acme.eng, collection) == ["backups.txt"]
    hr_doc = client.get("/v1/documents", headers=_auth(acme.hr),
                        params={"collection": collection}).json()["documents"][1]
    assert sorted(hr_doc["groups"]) == ["finance", "hr"]

    def counts(key: str) -> dict[str, Any]:
        r = client.get("/v1/collections", headers=_auth(key))
        collections: list[dict[str, Any]] = r.json()["collections"]
        return next(c for c in collections if c["name"] == collection)

    assert counts(acme.hr)["documents"] == 2 and counts(acme.eng)["documents"] == 1
    assert counts(acme.eng)["chunks"] < counts(acme.hr)["chunks"]
    # An outsider cannot delete (or learn about) it: 404, not 403.
    r = client.delete(f"/v1/documents/{hr_doc['id']}", headers=_auth(acme.eng))
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_listing_is_paginated(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    _ingest(client, worker, acme.admin, collection,
            {f"note-{i}.txt": f"Note number {i} about the office plants.".encode() for i in range(3)})
    page = client.get("/v1/documents", headers=_auth(acme.eng),
                      params={"collection": collection, "limit": 2, "offset": 1}).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 1
    assert [d["source"] for d in page["documents"]] == ["note-1.txt", "note-2.txt"]
    assert _sources(client, acme.eng, collection, offset=5) == []
    bad = client.get("/v1/documents", headers=_auth(acme.eng),
                     params={"collection": collection, "limit": 0})
    assert bad.status_code == 422


def test_tenants_never_see_each_others_documents_jobs_or_collections(
    client: TestClient, worker: IngestWorker, acme: Tenant, globex: Tenant, collection: str
) -> None:
    job_id = _upload(client, acme.admin, collection, {"espresso.md": ESPRESSO})
    for key in (globex.admin, globex.eng):
        r = client.get(f"/v1/jobs/{job_id}", headers=_auth(key))
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    worker.run_pending()
    [doc] = client.get("/v1/documents", headers=_auth(acme.admin),
                       params={"collection": collection}).json()["documents"]

    asks = [("/v1/search", {"query": "espresso machine", "collection": collection}),
            ("/v1/query", {"question": "When is the espresso machine descaled?",
                           "collection": collection}),
            ("/v1/chat/completions", {"model": collection, "messages": [
                {"role": "user", "content": "When is the espresso machine descaled?"}]})]
    found = client.post(asks[0][0], json=asks[0][1], headers=_auth(acme.eng)).json()["results"]
    assert [h["document"] for h in found] == ["espresso.md"]
    for key in (globex.admin, globex.eng):
        assert client.get("/v1/documents", headers=_auth(key),
                          params={"collection": collection}).status_code == 404
        for path, body in asks:  # searching, asking and chatting: as if it did not exist
            r = client.post(path, json=body, headers=_auth(key))
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", (path, r.text)
        models = client.get("/v1/models", headers=_auth(key)).json()["data"]
        assert collection not in {m["id"] for m in models}
        names = [c["name"] for c in client.get("/v1/collections", headers=_auth(key)).json()[
            "collections"]]
        assert collection not in names
        assert client.delete(f"/v1/documents/{doc['id']}", headers=_auth(key)).status_code == 404
    assert client.delete(f"/v1/collections/{collection}",
                         headers=_auth(globex.admin)).status_code == 404
    # globex may have a collection of the same name; it is a different one.
    assert client.post("/v1/collections", headers=_auth(globex.admin),
                       json={"name": collection}).status_code == 201
    assert _sources(client, globex.admin, collection) == []
    assert _sources(client, acme.admin, collection) == ["espresso.md"]


def test_only_admins_delete_documents(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    _ingest(client, worker, acme.admin, collection, {"backups.txt": BACKUPS})
    [doc] = client.get("/v1/documents", headers=_auth(acme.eng),
                       params={"collection": collection}).json()["documents"]
    r = client.delete(f"/v1/documents/{doc['id']}", headers=_auth(acme.eng))
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    assert client.delete(f"/v1/documents/{doc['id']}", headers=_auth(acme.admin)).status_code == 204
    assert _sources(client, acme.admin, collection) == []
    assert client.delete(f"/v1/documents/{doc['id']}", headers=_auth(acme.admin)).status_code == 404
    search = client.post("/v1/search", headers=_auth(acme.admin),
                         json={"query": "backups", "collection": collection})
    assert search.json()["results"] == []


def test_uploads_need_an_admin_key_and_valid_fields(
    client: TestClient, acme: Tenant, collection: str
) -> None:
    files = [("files", ("a.txt", b"hello"))]
    r = client.post("/v1/documents", headers=_auth(acme.hr), data={"collection": collection},
                    files=files)
    assert r.status_code == 403
    assert client.post("/v1/documents", data={"collection": collection},
                       files=files).status_code == 401
    for form, field in [({"collection": collection, "metadata": "[1]"}, "metadata"),
                        ({"collection": collection, "metadata": "{not json"}, "metadata"),
                        # What jsonb cannot hold is refused here, not a 500 from the database.
                        ({"collection": collection, "metadata": '{"a": "x\\u0000"}'}, "metadata"),
                        ({"collection": collection, "metadata": '{"a": [NaN]}'}, "metadata"),
                        ({"collection": "../etc"}, "collection"),
                        ({"collection": collection, "groups": "x" * 101}, "groups"),
                        ({"collection": collection, "groups": "hr\x00"}, "groups")]:
        r = client.post("/v1/documents", headers=_auth(acme.admin), data=form, files=files)
        assert r.status_code == 422, form
        assert r.json()["error"]["type"] == "invalid_request" and field in r.json()["error"]["message"]
    twice = [("files", ("a.txt", b"one")), ("files", ("dir/a.txt", b"two"))]
    r = client.post("/v1/documents", headers=_auth(acme.admin), data={"collection": collection},
                    files=twice)
    assert r.status_code == 422 and "a.txt" in r.json()["error"]["message"]
    r = client.post("/v1/documents", headers=_auth(acme.admin), data={"collection": collection})
    assert r.status_code == 422


def test_unknown_job_ids_are_404(client: TestClient, acme: Tenant) -> None:
    for job_id in (str(uuid.uuid4()), "not-a-uuid"):
        r = client.get(f"/v1/jobs/{job_id}", headers=_auth(acme.admin))
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_uploads_over_the_limit_are_413(retrieval_runtime: Runtime, acme: Tenant,
                                        collection: str) -> None:
    big = [("files", ("big.txt", b"x" * 20_000))]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit counts the stream
        yield (b'--B\r\nContent-Disposition: form-data; name="collection"\r\n\r\n'
               + collection.encode() + b'\r\n--B\r\nContent-Disposition: form-data; '
               b'name="files"; filename="big.txt"\r\nContent-Type: text/plain\r\n\r\n')
        for _ in range(20):
            yield b"x" * 1000
        yield b"\r\n--B--\r\n"

    with keyed_client(retrieval_runtime, max_upload_mb=0.01) as c:
        declared = c.post("/v1/documents", headers=_auth(acme.admin),
                          data={"collection": collection}, files=big)
        streamed = c.post("/v1/documents", content=chunked(), headers={
            **_auth(acme.admin), "content-type": "multipart/form-data; boundary=B"})
        small = c.post("/v1/documents", headers=_auth(acme.admin),
                       data={"collection": collection}, files=[("files", ("s.txt", b"x" * 500))])
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["type"] == "payload_too_large"
    assert small.status_code == 202


def test_collections_are_created_listed_and_deleted_by_admins(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    admin = _auth(acme.admin)
    assert client.post("/v1/collections", headers=_auth(acme.hr),
                       json={"name": collection}).status_code == 403
    created = client.post("/v1/collections", headers=admin,
                          json={"name": collection, "embedder": "bundled:all-MiniLM-L6-v2"})
    assert created.status_code == 201, created.text
    assert created.json() == {"name": collection, "embedder": "all-MiniLM-L6-v2", "dim": 384,
                              "documents": 0, "chunks": 0, "backend": "onnx", "precision": "int8",
                              "re_embedding_to": None}
    again = client.post("/v1/collections", headers=admin, json={"name": collection})
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"
    other = client.post("/v1/collections", headers=admin,
                        json={"name": f"{collection}-x", "embedder": "BAAI/bge-small-en-v1.5"})
    assert other.status_code == 400 and "all-MiniLM-L6-v2" in other.json()["error"]["message"]
    assert client.post("/v1/collections", headers=admin, json={"name": "a/b"}).status_code == 422

    _ingest(client, worker, acme.admin, collection, {"backups.txt": BACKUPS})
    [listed] = [c for c in client.get("/v1/collections", headers=admin).json()["collections"]
                if c["name"] == collection]
    assert listed["documents"] == 1 and listed["chunks"] >= 1

    assert client.delete(f"/v1/collections/{collection}", headers=_auth(acme.hr)).status_code == 403
    assert client.delete(f"/v1/collections/{collection}", headers=admin).status_code == 204
    assert client.get("/v1/documents", headers=admin,
                      params={"collection": collection}).status_code == 404
    assert client.delete(f"/v1/collections/{collection}", headers=admin).status_code == 404


def test_worker_thread_ingests_uploads_and_stops_cleanly(
    client: TestClient, worker: IngestWorker, acme: Tenant, collection: str
) -> None:
    with worker.running() as thread:
        job_id = _upload(client, acme.admin, collection, {"espresso.md": ESPRESSO})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}", headers=_auth(acme.admin)).json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
    assert not thread.is_alive()
    assert job["status"] == "done", job
    assert _sources(client, acme.admin, collection) == ["espresso.md"]


def test_a_documents_chunks_are_listed_a_page_at_a_time_to_who_may_read_it(
    client: TestClient, worker: IngestWorker, acme: Tenant, globex: Tenant, collection: str
) -> None:
    sections = "\n\n".join(f"## Part {i}\n\n" + f"Salary band {i} covers grade {i} staff. " * 30
                           for i in range(4))
    _ingest(client, worker, acme.admin, collection,
            {"bands.md": f"# Bands\n\n{sections}".encode()}, groups="hr")
    [doc] = client.get("/v1/documents", headers=_auth(acme.hr),
                       params={"collection": collection}).json()["documents"]
    url = f"/v1/documents/{doc['id']}/chunks"
    whole = client.get(url, headers=_auth(acme.hr), params={"limit": 500})
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["document"]["source"] == "bands.md" and body["total"] == doc["chunk_count"] > 3
    assert [c["ordinal"] for c in body["chunks"]] == list(range(doc["chunk_count"]))
    first = body["chunks"][0]
    assert set(first) == {"chunk_id", "ordinal", "heading", "page", "token_count", "text"}
    assert first["token_count"] > 0 and first["page"] is None
    band = next(c for c in body["chunks"] if "Salary band 2" in c["text"])
    assert band["heading"] == "Bands > Part 2", band
    page = client.get(url, headers=_auth(acme.hr), params={"limit": 2, "offset": 1}).json()
    assert page["chunks"] == body["chunks"][1:3] and (page["limit"], page["offset"]) == (2, 1)
    # Outside the document's groups, in another tenant or unknown: the same 404.
    for key, target in [(acme.eng, url), (globex.admin, url), (acme.admin, "/v1/documents/nope/chunks")]:
        r = client.get(target, headers=_auth(key))
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", r.text
    assert client.get(url, headers=_auth(acme.hr), params={"limit": 0}).status_code == 422
    assert client.get(url).status_code == 401
