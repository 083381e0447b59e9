"""A PDF's original bytes are kept beside its chunks and served to the callers who may read it.

Uploads go through the real API and a real ``IngestWorker``; files on disk through the same
``IngestPipeline`` as ``verity ingest``; everything over the embedded Postgres.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ingest.pipeline import IngestPipeline
from ingest.worker import IngestWorker
from tests.clients import bearer, keyed_client
from tests.helpers import make_pdf
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.settings import ChunkingSettings, WorkerSettings

pytestmark = pytest.mark.integration

MANUAL = make_pdf(["Contents: fire safety.", "The assembly point is the north car park.",
                   "Index."])


@pytest.fixture(scope="module")
def client(retrieval_runtime: Runtime) -> Iterator[TestClient]:
    with keyed_client(retrieval_runtime) as c:
        yield c


def _stored_files(runtime: Runtime, doc_id: str) -> list[tuple[str, bytes, str]]:
    with runtime.db.pool.connection() as conn:
        rows = conn.execute("SELECT media_type, content, sha256 FROM document_files "
                            "WHERE document_id = %s", (doc_id,)).fetchall()
    return [(str(m), bytes(c), str(s)) for m, c, s in rows]


def _ids(client: TestClient, key: str, collection: str) -> dict[str, str]:
    r = client.get("/v1/documents", headers=bearer(key), params={"collection": collection})
    assert r.status_code == 200, r.text
    return {d["source"]: d["id"] for d in r.json()["documents"]}


def test_an_uploaded_pdf_is_served_only_to_callers_who_may_read_it(
    retrieval_runtime: Runtime, client: TestClient, collection: str
) -> None:
    runtime = retrieval_runtime
    keys = ApiKeys(runtime.db)
    tenant = f"files-{uuid.uuid4().hex[:8]}"
    admin = keys.create(tenant=tenant, is_admin=True)[0]
    hr = keys.create(tenant=tenant, groups=("hr",))[0]
    eng = keys.create(tenant=tenant, groups=("engineering",))[0]
    stranger = keys.create(tenant=f"other-{uuid.uuid4().hex[:8]}", is_admin=True)[0]
    for name, data, groups in [("safety manual.pdf", MANUAL, "hr"),
                               ("notes.md", b"# Notes\n\nNothing to see.", "")]:
        r = client.post("/v1/documents", headers=bearer(admin),
                        data={"collection": collection, "groups": groups},
                        files=[("files", (name, data))])
        assert r.status_code == 202, r.text
    worker = IngestWorker(db=runtime.db, embedder=runtime.embedder,
                          chunking=runtime.settings.chunking, settings=WorkerSettings())
    worker.run_pending()
    ids = _ids(client, admin, collection)
    pdf, notes = ids["safety manual.pdf"], ids["notes.md"]

    r = client.get(f"/v1/documents/{pdf}/file", headers=bearer(hr))
    assert r.status_code == 200, r.text
    assert r.content == MANUAL
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith('inline; filename="safety manual.pdf"')
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["etag"] == f'"{hashlib.sha256(MANUAL).hexdigest()}"'
    assert _stored_files(runtime, pdf) == [("application/pdf", MANUAL,
                                            hashlib.sha256(MANUAL).hexdigest())]

    # Outside its groups, in another tenant, or no such id: the same 404, nothing revealed.
    missing = client.get(f"/v1/documents/{uuid.uuid4().hex[:20]}/file", headers=bearer(hr))
    assert missing.status_code == 404
    for key in (eng, stranger):
        refused = client.get(f"/v1/documents/{pdf}/file", headers=bearer(key))
        assert (refused.status_code, refused.json()) == (404, missing.json())
    assert client.get(f"/v1/documents/{pdf}/file").status_code == 401

    # A document whose file is not kept says so, to a caller who may read it.
    text_only = client.get(f"/v1/documents/{notes}/file", headers=bearer(eng))
    assert text_only.status_code == 404
    assert "no original file is kept for notes.md" in text_only.json()["error"]["message"]

    assert client.delete(f"/v1/documents/{pdf}", headers=bearer(admin)).status_code == 204
    assert _stored_files(runtime, pdf) == []
    assert client.get(f"/v1/documents/{pdf}/file", headers=bearer(hr)).status_code == 404


def test_reingesting_replaces_the_file_and_over_the_limit_none_is_kept(
    retrieval_runtime: Runtime, collection: str, tmp_path: Path
) -> None:
    runtime = retrieval_runtime
    store = PgvectorStore(runtime.db, tenant=f"files-{uuid.uuid4().hex[:8]}")
    folder = tmp_path / "handbook"
    folder.mkdir()
    pdf = folder / "drills.pdf"

    def ingest(data: bytes, keep_file_mb: float = 25.0) -> str:
        pdf.write_bytes(data)
        (folder / "drills.pdf.meta.json").write_text(json.dumps({"groups": ["hr"]}))
        pipeline = IngestPipeline(store=store, embedder=runtime.embedder,
                                  chunking=ChunkingSettings(keep_file_mb=keep_file_mb))
        report = pipeline.run([folder], collection=collection)
        assert report.ok and report.added + report.updated == ["handbook/drills.pdf"], report
        docs, _ = store.list_documents(collection=collection, limit=5, offset=0)
        return docs[0].id

    first = make_pdf(["Fire drills happen on the first Monday of each quarter."])
    doc_id = ingest(first)
    assert [content for _, content, _ in _stored_files(runtime, doc_id)] == [first]
    second = make_pdf(["Fire drills happen on the last Friday of each month.", "Page two."])
    assert ingest(second) == doc_id
    assert [content for _, content, _ in _stored_files(runtime, doc_id)] == [second]
    # Over the limit the document is still ingested, and the older version's file is gone.
    third = make_pdf(["Fire drills are announced a week ahead."])
    assert ingest(third, keep_file_mb=len(third) / 2e6) == doc_id
    assert _stored_files(runtime, doc_id) == []
    chunks = store.chunk_context(f"{doc_id}-00000", window=0)[1]
    assert "announced a week ahead" in chunks[0].text
