"""What the web page's document library asks of the API: recent jobs with per-file status,
cancelling a job (a running one too), and rebuilding a collection's vector index.

A real ``IngestWorker`` ingests over the embedded Postgres and the bundled embedder.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ingest.worker import IngestWorker
from tests.clients import bearer, keyed_client
from tests.helpers import drained_worker
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys
from verity.backends.stores.jobs import CANCELLED
from verity.core.types import Job

pytestmark = pytest.mark.integration

NOTE = ("The {i}th note says the office plants on floor {i} are watered on day {i} of the month. "
        "It also lists who holds the spare keys to room {i}, and when the cleaners come.\n\n")


@pytest.fixture(scope="module")
def keys(retrieval_runtime: Runtime) -> tuple[str, str]:
    tenant = f"library-{uuid.uuid4().hex[:8]}"
    api_keys = ApiKeys(retrieval_runtime.db)
    return (api_keys.create(tenant=tenant, is_admin=True)[0],
            api_keys.create(tenant=tenant)[0])


@pytest.fixture(scope="module")
def client(retrieval_runtime: Runtime) -> Iterator[TestClient]:
    with keyed_client(retrieval_runtime) as c:
        yield c


@pytest.fixture(scope="module")
def worker(retrieval_runtime: Runtime) -> Iterator[IngestWorker]:
    w: IngestWorker = drained_worker(retrieval_runtime)
    yield w
    w.run_pending()


def _upload(client: TestClient, key: str, collection: str, files: dict[str, bytes]) -> str:
    r = client.post("/v1/documents", headers=bearer(key), data={"collection": collection},
                    files=[("files", (name, data)) for name, data in files.items()])
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _job(client: TestClient, key: str, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}", headers=bearer(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_jobs_list_newest_first_with_each_files_status(
    client: TestClient, worker: IngestWorker, keys: tuple[str, str], collection: str
) -> None:
    admin, reader = keys
    first = _upload(client, admin, collection, {"a.md": b"# A\n\nAlpha is the first letter."})
    second = _upload(client, admin, collection, {"b.md": b"# B\n\nBeta comes second.",
                                                 "c.png": b"\x89PNG\r\n\x1a\n"})
    queued = _job(client, admin, second)
    assert [(f["name"], f["status"]) for f in queued["files"]] == [("b.md", "queued"),
                                                                   ("c.png", "queued")]
    assert queued["eta_s"] is None and queued["elapsed_s"] is None

    worker.run_pending()
    r = client.get("/v1/jobs", headers=bearer(reader), params={"collection": collection})
    assert r.status_code == 200, r.text
    jobs = r.json()["jobs"]
    assert [j["id"] for j in jobs] == [second, first]
    files = {f["name"]: f for f in jobs[0]["files"]}
    assert files["b.md"]["status"] == "done" and files["c.png"]["status"] == "failed"
    assert "unsupported file type" in files["c.png"]["reason"]
    assert jobs[0]["elapsed_s"] >= 0 and jobs[0]["eta_s"] is None
    other = client.get("/v1/jobs", headers=bearer(reader), params={"collection": "nothing-here"})
    assert other.json()["jobs"] == []


def test_a_queued_job_is_cancelled_and_never_runs(
    client: TestClient, worker: IngestWorker, keys: tuple[str, str], collection: str
) -> None:
    admin, reader = keys
    job_id = _upload(client, admin, collection, {"a.md": b"# A\n\nAlpha."})
    refused = client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(reader))
    assert refused.status_code == 403
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(admin))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["error"] == CANCELLED
    assert r.json()["files"] == [{"name": "a.md", "status": "cancelled", "reason": None}]
    assert worker.run_pending() == 0
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(admin))
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict"
    assert client.post(f"/v1/jobs/{uuid.uuid4()}/cancel", headers=bearer(admin)).status_code == 404
    listed = client.get("/v1/documents", headers=bearer(admin), params={"collection": collection})
    assert listed.status_code == 404 or listed.json()["total"] == 0


def test_a_running_job_stops_at_its_next_report_when_cancelled(
    client: TestClient, worker: IngestWorker, keys: tuple[str, str], collection: str
) -> None:
    admin, _ = keys
    files = {f"note-{i:02d}.md": (f"# Note {i}\n\n" + NOTE.format(i=i) * 12).encode()
             for i in range(40)}
    job_id = _upload(client, admin, collection, files)
    ended: list[Job | None] = []
    thread = threading.Thread(target=lambda: ended.append(worker.run_once()))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while _job(client, admin, job_id)["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.005)
        r = client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(admin))
        assert r.status_code == 200, r.text
    finally:
        thread.join(120)
    assert ended and ended[0] is not None and ended[0].status == "cancelled"
    job = _job(client, admin, job_id)
    assert job["status"] == "cancelled" and job["finished_at"]
    assert {f["status"] for f in job["files"]} <= {"done", "cancelled"}
    listed = client.get("/v1/documents", headers=bearer(admin),
                        params={"collection": collection, "limit": 100}).json()
    assert listed["total"] < len(files)


def test_reindex_rebuilds_the_collections_vector_index_and_search_still_works(
    client: TestClient, worker: IngestWorker, keys: tuple[str, str], collection: str
) -> None:
    admin, reader = keys
    _upload(client, admin, collection, {"espresso.md": b"# Espresso\n\nThe espresso machine is "
                                                      b"descaled every 200 cups."})
    worker.run_pending()
    assert client.post(f"/v1/collections/{collection}/reindex",
                       headers=bearer(reader)).status_code == 403
    assert client.post("/v1/collections/no-such-thing/reindex",
                       headers=bearer(admin)).status_code == 404
    r = client.post(f"/v1/collections/{collection}/reindex", headers=bearer(admin))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["collection"] == collection and body["chunks"] >= 1
    assert len(body["indexes"]) == 1 and body["indexes"][0].startswith("chunks_bin_hnsw_")
    hits = client.post("/v1/search", headers=bearer(reader),
                       json={"query": "how often is the espresso machine descaled",
                             "collection": collection}).json()["results"]
    assert hits[0]["document"] == "espresso.md"
