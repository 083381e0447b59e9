"""The FAISS accelerator against the real embedded Postgres: in step with it, and accurate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from verity.backends.stores.database import Database
from verity.backends.stores.faiss_index import FaissAccelerator, read_collection
from verity.backends.stores.faiss_search import search_exact
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.settings import FaissSettings
from verity.core.types import Chunk, Document, Section, chunk_id, document_id

pytestmark = pytest.mark.integration


def _unit(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _write(store: PgvectorStore, collection: str, source: str, vectors: np.ndarray,
           version: str = "v1") -> list[str]:
    doc = Document(source=source, title=source, content_hash=f"{source}-{version}",
                   sections=(Section("x"),))
    did = document_id(collection=f"{store.tenant}/{collection}", source=source)
    chunks = [Chunk(id=chunk_id(did, i), document_id=did, ordinal=i, text=f"{source} {i} {version}")
              for i in range(len(vectors))]
    store.write_document(collection=collection, document=doc, chunks=chunks, embeddings=vectors)
    return [c.id for c in chunks]


def _postgres_ids(database: Database, collection: str) -> set[str]:
    with database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT k.id FROM chunks k JOIN collections c ON c.id = k.collection_id "
            "WHERE c.tenant = 'default' AND c.name = %s", (collection,)).fetchall()
    return {r[0] for r in rows}


@pytest.fixture
def accelerator(database: Database, tmp_path: Path) -> FaissAccelerator:
    return FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings())


def test_counts_and_ids_agree_after_write_delete_and_reindex(
    store: PgvectorStore, database: Database, accelerator: FaissAccelerator, collection: str,
) -> None:
    rng = np.random.default_rng(0)
    store.ensure_collection(collection, embed_model="test", embed_dim=32)
    for source, n in [("a.md", 5), ("b.md", 7), ("c.md", 3)]:
        _write(store, collection, source, _unit(rng, n, 32))

    index, rebuilt = accelerator.load_or_build(collection)
    assert rebuilt and len(index) == 15
    assert set(index.all_ids()) == _postgres_ids(database, collection)

    assert store.delete_document(collection=collection, source="b.md")
    index, rebuilt = accelerator.load_or_build(collection)
    assert rebuilt and len(index) == 8 == accelerator.manifest(collection).chunk_count
    assert set(index.all_ids()) == _postgres_ids(database, collection)

    _write(store, collection, "d.md", _unit(rng, 4, 32))
    index, rebuilt = accelerator.load_or_build(collection)
    assert rebuilt and set(index.all_ids()) == _postgres_ids(database, collection)

    index = accelerator.reindex(collection)
    assert len(index) == 12 and set(index.all_ids()) == _postgres_ids(database, collection)


def test_binary_int8_rescoring_finds_the_exact_top1(
    store: PgvectorStore, database: Database, accelerator: FaissAccelerator, collection: str,
) -> None:
    rng = np.random.default_rng(1)
    store.ensure_collection(collection, embed_model="test", embed_dim=384)
    _write(store, collection, "many.md", _unit(rng, 300, 384))
    _, ids, stored = read_collection(database, tenant="default", collection=collection,
                                     batch_size=100)
    reference = stored.astype(np.float32)  # what Postgres holds (halfvec), as exact float
    near = stored[:40].astype(np.float32) + 2.0 * _unit(rng, 40, 384)
    queries = np.vstack([near, _unit(rng, 60, 384)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    agree, clear = 0, 0
    for query in queries:
        rows, scores = search_exact(reference, query, top_k=2)
        hits = accelerator.search(collection, query=query, top_k=5, oversample=60)
        exact_hits = accelerator.search(collection, query=query, top_k=5, oversample=60,
                                        rescore="float")
        agree += hits[0].chunk_id == ids[rows[0]]
        if scores[0] - scores[1] > 2e-3:  # not a near-tie: int8 must get it right
            clear += 1
            assert hits[0].chunk_id == ids[rows[0]]
            assert exact_hits[0].chunk_id == ids[rows[0]]
        assert hits[0].score == pytest.approx(scores[0], abs=5e-3)
        assert exact_hits[0].score == pytest.approx(float(reference[rows[0]] @ query), abs=1e-5)
    assert clear >= 80 and agree >= 97


def test_saved_index_is_reused_when_unchanged_and_rebuilt_when_not(
    store: PgvectorStore, database: Database, tmp_path: Path, collection: str,
) -> None:
    rng = np.random.default_rng(2)
    store.ensure_collection(collection, embed_model="test", embed_dim=16)
    _write(store, collection, "a.md", _unit(rng, 4, 16))
    _write(store, collection, "b.md", _unit(rng, 6, 16))
    first = FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings())
    built, rebuilt = first.load_or_build(collection)
    assert rebuilt
    saved_file = first.directory(collection) / "binary.faiss"
    stamp = saved_file.stat().st_mtime_ns

    # A new process (a new accelerator) loads the files without rebuilding.
    again, rebuilt = FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings()
                                      ).load_or_build(collection)
    assert not rebuilt and again.all_ids() == built.all_ids()
    assert saved_file.stat().st_mtime_ns == stamp

    store.delete_document(collection=collection, source="a.md")
    after_delete, rebuilt = FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings()
                                             ).load_or_build(collection)
    assert rebuilt and len(after_delete) == 6

    # Same source, same number of chunks (so the same chunk ids), new content: rebuilt too.
    _write(store, collection, "b.md", _unit(rng, 6, 16), version="v2")
    _, rebuilt = FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings()
                                  ).load_or_build(collection)
    assert rebuilt

    (first.directory(collection) / "manifest.json").unlink()  # e.g. a crash while saving
    _, rebuilt = first.load_or_build(collection)
    assert rebuilt
