"""Re-embedding a collection in place with the real bundled embedder: float32 documents
re-embedded into int8 ones search as a fresh int8 ingest does, the collection stays
searchable (with the precision rule holding) while it runs, a stopped re-embed resumes,
and the API queues it as an admin-only job of the caller's tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ingest.pipeline import IngestPipeline
from ingest.reembed import Reembedder
from ingest.worker import IngestWorker
from tests.clients import bearer, keyed_client
from tests.helpers import drained_worker
from verity.answering.runtime import Runtime
from verity.backends.embedders import LocalEmbedder
from verity.backends.onnx_embedder import OnnxEmbedder
from verity.backends.stores.api_keys import ApiKeys
from verity.backends.stores.collection_vectors import read_state
from verity.backends.stores.faiss_index import FaissAccelerator
from verity.backends.stores.jobs import REEMBED_CANCELLED
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.errors import ConfigError
from verity.core.settings import (
    ChunkingSettings,
    EmbedderSettings,
    FaissSettings,
    RetrievalSettings,
    WorkerSettings,
)
from verity.core.types import Document, Section

pytestmark = pytest.mark.integration

TOPICS = {
    "fever.md": "Aspirin lowers fever in adults within an hour; children take paracetamol.",
    "backups.md": "Backups run every night at two; a restore needs the dump and the data dir.",
    "holidays.md": "Staff take 28 days of paid holiday a year, booked through the HR portal.",
    "drills.md": "Fire drills happen on the first Monday of each quarter at the north car park.",
    "statins.md": "Statins reduce LDL cholesterol and the risk of cardiovascular events.",
    "keys.md": "Spare keys to the server room are held by the facilities desk on floor two.",
    "database.md": "Set VERITY_STORE__DSN to use an external PostgreSQL server with pgvector.",
    "parking.md": "Visitors park in bays 40 to 60 and sign in at reception on arrival.",
}
QUERIES = ["does aspirin lower fever?", "when do the backups run?", "how many holidays do I get?",
           "where is the assembly point for fire drills?", "what lowers cholesterol?",
           "who has the server room keys?", "how do I use my own postgres?", "where can visitors park?"]


@pytest.fixture(scope="module")
def float32_embedder(data_dir: Path) -> OnnxEmbedder:
    e = OnnxEmbedder(EmbedderSettings(backend="onnx", precision="float32"), data_dir=data_dir)
    e.warm_up()
    return e


def _ingest(store: PgvectorStore, embedder: LocalEmbedder, collection: str,
            texts: dict[str, str] = TOPICS, *, groups: tuple[str, ...] = ()) -> None:
    docs = [Document(source=name, title=name, sections=(Section(text),),
                     content_hash=f"h-{name}", acl_groups=groups) for name, text in texts.items()]
    report = IngestPipeline(store=store, embedder=embedder,
                            chunking=ChunkingSettings()).ingest_documents(docs, collection=collection)
    assert report.ok, report.failed


def _vectors(store: PgvectorStore, collection: str) -> dict[tuple[str, int], np.ndarray]:
    """Every chunk's stored vector by (source, ordinal)."""
    with store._db.pool.connection() as conn:
        rows = conn.execute(
            "SELECT d.source, k.ordinal, k.embedding FROM chunks k "
            "JOIN documents d ON d.id = k.document_id JOIN collections c ON c.id = k.collection_id "
            "WHERE c.tenant = %s AND c.name = %s", (store.tenant, collection)).fetchall()
    return {(r[0], r[1]): r[2].to_numpy().astype(np.float32) for r in rows}


def _state(store: PgvectorStore, collection: str) -> Any:
    with store._db.pool.connection() as conn:
        return read_state(conn, tenant=store.tenant, name=collection)


def _top(runtime: Runtime, collection: str, *, mode: str, dense_mode: str) -> list[list[str]]:
    rag = runtime.rag()
    settings = RetrievalSettings(lexical="postgres", mode=mode, dense_mode=dense_mode)  # type: ignore[arg-type]
    return [[h.source for h in rag.retrieve(q, collection=collection, top_k=3, settings=settings)]
            for q in QUERIES]


def test_float32_documents_re_embedded_into_int8_search_as_a_fresh_int8_ingest(
        retrieval_runtime: Runtime, store: PgvectorStore, embedder: LocalEmbedder,
        float32_embedder: OnnxEmbedder) -> None:
    assert embedder.precision == "int8"
    old, fresh = f"re-{uuid.uuid4().hex[:8]}", f"fresh-{uuid.uuid4().hex[:8]}"
    _ingest(store, float32_embedder, old)
    _ingest(store, embedder, fresh)
    before = _vectors(store, old)
    assert (_state(store, old).backend, _state(store, old).precision) == ("onnx", "float32")

    faiss = FaissAccelerator(store._db, data_dir=retrieval_runtime.settings.data_dir,
                             settings=FaissSettings())
    manifest = faiss.manifest(old)
    seen: list[tuple[int, int]] = []
    # All chunks in one batch, as the fresh ingest embedded them: int8 activations are
    # quantized per batch, so only the same batching gives the same vectors.
    report = Reembedder(store._db, embedder).run(
        tenant=store.tenant, collection=old, progress=lambda done, total: seen.append((done, total)))

    after, expected = _vectors(store, old), _vectors(store, fresh)
    assert report.chunks == report.total == len(expected) == len(before)
    assert seen == [(0, len(expected)), (len(expected), len(expected))]
    cos_after = [float(after[k] @ expected[k]) for k in expected]
    cos_before = [float(before[k] @ expected[k]) for k in expected]
    assert min(cos_after) > 0.9999  # the same vectors a fresh int8 ingest writes (halfvec)
    assert np.mean(cos_before) < 0.999  # and they were not before
    state = _state(store, old)
    assert (state.backend, state.precision, state.reembedding) == ("onnx", "int8", False)
    # same ids and hashes, new vectors: saved FAISS files no longer match, and are rebuilt
    assert faiss.manifest(old).chunk_count == manifest.chunk_count
    assert faiss.manifest(old) != manifest
    listed = {s.name: s for s in store.stats()}[old]
    assert (listed.embed_backend, listed.embed_precision, listed.reembed_precision) == (
        "onnx", "int8", None)
    for mode, dense_mode in [("dense", "float"), ("dense", "binary-rescore"),
                             ("hybrid", "binary-rescore")]:
        assert (_top(retrieval_runtime, old, mode=mode, dense_mode=dense_mode)
                == _top(retrieval_runtime, fresh, mode=mode, dense_mode=dense_mode))
    # int8 vectors now: an int8 ingest is accepted, a float32 one is refused
    _ingest(store, embedder, old, {"extra.md": "An extra note about the canteen menu."})
    with pytest.raises(ConfigError, match="verity reindex --re-embed"):
        _ingest(store, float32_embedder, old, {"more.md": "Another note."})


class _Stop(Exception):
    pass


def test_a_stopped_re_embed_keeps_the_collection_searchable_and_resumes(
        retrieval_runtime: Runtime, store: PgvectorStore, embedder: LocalEmbedder,
        float32_embedder: OnnxEmbedder, data_dir: Path, collection: str) -> None:
    _ingest(store, float32_embedder, collection)
    total = len(_vectors(store, collection))

    def stop_after_one_batch(done: int, _: int) -> None:
        if done:
            raise _Stop

    with pytest.raises(_Stop):
        Reembedder(store._db, embedder, batch_chunks=3).run(
            tenant=store.tenant, collection=collection, progress=stop_after_one_batch)
    state = _state(store, collection)
    assert (state.precision, state.target_precision, state.after is not None) == (
        "float32", "int8", True)

    # Float queries search both kinds of vectors; int8 queries cannot search the float32
    # ones still there, so they are refused until the re-embed finishes.
    hits = retrieval_runtime.rag().retrieve(QUERIES[0], collection=collection)
    assert hits and hits[0].source == "fever.md"
    int8_queries = OnnxEmbedder(EmbedderSettings(precision="int8", query_precision="int8"),
                                data_dir=data_dir)
    with pytest.raises(ConfigError, match="being re-embedded from float32 to int8"):
        replace(retrieval_runtime, embedder=int8_queries).rag().retrieve(QUERIES[0],
                                                                         collection=collection)
    # Only the target's vectors may be written meanwhile; the recorded embedder stays.
    with pytest.raises(ConfigError, match="is being re-embedded into int8"):
        _ingest(store, float32_embedder, collection, {"more.md": "Another note."})
    _ingest(store, embedder, collection, {"extra.md": "An extra note about the canteen menu."})
    assert _state(store, collection).precision == "float32"

    report = Reembedder(store._db, embedder, batch_chunks=3).run(tenant=store.tenant,
                                                                 collection=collection)
    assert 0 < report.chunks < report.total == total + 1  # resumed after the first batch
    state = _state(store, collection)
    assert (state.precision, state.reembedding) == ("int8", False)
    assert replace(retrieval_runtime, embedder=int8_queries).rag().retrieve(
        QUERIES[0], collection=collection)[0].source == "fever.md"
    again = Reembedder(store._db, embedder).run(tenant=store.tenant, collection=collection)
    assert again.chunks == again.total  # a finished re-embed run again does it all again


def test_a_re_embed_that_would_change_the_model_or_dimension_is_refused(
        store: PgvectorStore, embedder: LocalEmbedder, collection: str) -> None:
    store.create_collection(collection, embed_model=embedder.name, embed_dim=768)
    with pytest.raises(ConfigError, match="re-embedding keeps the dimension"):
        Reembedder(store._db, embedder).run(tenant=store.tenant, collection=collection)
    store.create_collection(f"{collection}-m", embed_model="other-model", embed_dim=embedder.dim)
    with pytest.raises(ConfigError, match="not the model"):
        Reembedder(store._db, embedder).run(tenant=store.tenant, collection=f"{collection}-m")


@pytest.fixture(scope="module")
def api(retrieval_runtime: Runtime) -> Iterator[TestClient]:
    with keyed_client(retrieval_runtime) as c:
        yield c


def test_the_api_queues_a_re_embed_job_for_admins_of_the_tenant(
        api: TestClient, retrieval_runtime: Runtime, float32_embedder: OnnxEmbedder,
        collection: str) -> None:
    runtime = retrieval_runtime
    tenant = f"reembed-{uuid.uuid4().hex[:8]}"
    keys = ApiKeys(runtime.db)
    admin, reader = keys.create(tenant=tenant, is_admin=True)[0], keys.create(tenant=tenant)[0]
    stranger = keys.create(tenant=f"{tenant}-x", is_admin=True)[0]
    store = PgvectorStore(runtime.db, tenant=tenant)
    _ingest(store, float32_embedder, collection)
    worker = drained_worker(runtime, poll_interval_s=1.0)
    url, body = f"/v1/collections/{collection}/reindex", {"re_embed": True}

    assert api.post(url, json=body, headers=bearer(reader)).status_code == 403
    assert api.post(url, json=body, headers=bearer(stranger)).status_code == 404
    assert api.post("/v1/collections/nothing/reindex", json=body,
                    headers=bearer(admin)).status_code == 404
    r = api.post(url, json=body, headers=bearer(admin))
    assert r.status_code == 202, r.text
    chunks = len(_vectors(store, collection))
    assert r.json()["chunks"] == chunks and r.json()["collection"] == collection
    job_id = r.json()["job_id"]
    twice = api.post(url, json=body, headers=bearer(admin))
    assert twice.status_code == 409 and twice.json()["error"]["type"] == "conflict"
    assert api.get(f"/v1/jobs/{job_id}", headers=bearer(stranger)).status_code == 404

    assert worker.run_pending() == 1
    job = api.get(f"/v1/jobs/{job_id}", headers=bearer(reader)).json()
    assert (job["kind"], job["status"], job["error"]) == ("reembed", "done", None)
    assert job["progress"]["chunks_written"] == job["progress"]["chunks_total"] == chunks
    [listed] = [c for c in api.get("/v1/collections", headers=bearer(reader)).json()["collections"]
                if c["name"] == collection]
    assert (listed["backend"], listed["precision"], listed["re_embedding_to"]) == (
        "onnx", "int8", None)
    # Without re_embed the route still rebuilds the index, as before.
    plain = api.post(url, headers=bearer(admin))
    assert plain.status_code == 200 and plain.json()["chunks"] == chunks


def test_a_cancelled_re_embed_job_never_runs_and_another_can_be_queued(
        api: TestClient, retrieval_runtime: Runtime, float32_embedder: OnnxEmbedder,
        collection: str) -> None:
    runtime = retrieval_runtime
    tenant = f"reembed-{uuid.uuid4().hex[:8]}"
    admin = ApiKeys(runtime.db).create(tenant=tenant, is_admin=True)[0]
    store = PgvectorStore(runtime.db, tenant=tenant)
    _ingest(store, float32_embedder, collection)
    url, body = f"/v1/collections/{collection}/reindex", {"re_embed": True}
    job_id = api.post(url, json=body, headers=bearer(admin)).json()["job_id"]
    cancelled = api.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(admin))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"] == REEMBED_CANCELLED
    worker = IngestWorker(db=runtime.db, embedder=runtime.embedder,
                          chunking=runtime.settings.chunking, settings=WorkerSettings())
    assert worker.run_pending() == 0
    # A running one stops at its next progress report, leaving the re-embed unfinished.
    running_id = api.post(url, json=body, headers=bearer(admin)).json()["job_id"]
    job = worker.queue.claim(worker=worker.name, job_id=running_id)
    assert job is not None and job.kind == "reembed"
    assert api.post(f"/v1/jobs/{running_id}/cancel", headers=bearer(admin)).status_code == 200
    ended = worker.run(job)
    assert ended is not None and ended.status == "cancelled"
    assert _state(store, collection).target_precision == "int8"
    again = api.post(url, json=body, headers=bearer(admin))
    assert again.status_code == 202, again.text
    assert worker.run_pending() == 1
    state = _state(store, collection)
    assert (state.precision, state.reembedding) == ("int8", False)


def test_an_ingest_already_running_when_a_re_embed_starts_writes_no_old_vectors(
        store: PgvectorStore, embedder: LocalEmbedder, float32_embedder: OnnxEmbedder,
        collection: str) -> None:
    from verity.backends.stores.reembed import Embedding, start_reembed

    _ingest(store, float32_embedder, collection, {"fever.md": TOPICS["fever.md"]})
    target = Embedding(model=embedder.name, dim=embedder.dim, backend="onnx", precision="int8")
    docs = [Document(source="keys.md", title="keys.md", sections=(Section(TOPICS["keys.md"]),),
                     content_hash="h-keys")]
    pipeline = IngestPipeline(store=store, embedder=float32_embedder, chunking=ChunkingSettings())
    # the run checked the collection at its start; the re-embed begins before its first write
    report = pipeline.ingest_documents(docs, collection=collection, before_write=lambda: (
        start_reembed(store._db, tenant=store.tenant, name=collection, target=target), None)[1])
    assert [s for s, _ in report.failed] == ["keys.md"]
    assert "is being re-embedded into int8" in report.failed[0][1]
    assert {source for source, _ in _vectors(store, collection)} == {"fever.md"}


def test_a_worker_with_other_embedder_settings_fails_the_job_and_changes_nothing(
        retrieval_runtime: Runtime, store: PgvectorStore, float32_embedder: OnnxEmbedder,
        collection: str) -> None:
    from verity.backends.stores.jobs import JobQueue

    _ingest(store, float32_embedder, collection, {"fever.md": TOPICS["fever.md"]})
    queue = JobQueue(store._db)
    job_id = queue.enqueue_reembed(tenant=store.tenant, collection=collection, chunks_total=1,
                                   backend="onnx", precision="int8")
    worker = IngestWorker(db=store._db, embedder=float32_embedder,
                          chunking=retrieval_runtime.settings.chunking, settings=WorkerSettings())
    job = queue.claim(worker=worker.name, job_id=job_id)
    assert job is not None
    ended = worker.run(job)
    assert ended is not None and ended.status == "failed"
    assert "asked for int8 vectors (onnx), and this worker embeds float32" in str(ended.error)
    state = _state(store, collection)
    assert (state.precision, state.reembedding) == ("float32", False)
