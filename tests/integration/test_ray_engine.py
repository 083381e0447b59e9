"""``verity ingest --engine ray``: the same chunks as the local engine, on a local Ray cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest import ray_engine
from ingest.attributes import DocumentAttributes
from ingest.beir import load_beir_corpus
from ingest.pipeline import IngestPipeline
from ingest.ray_engine import RayOptions
from verity.backends.embedders import LocalEmbedder
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.errors import ConfigError
from verity.core.settings import ChunkingSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Chunk ids, ordinals, texts and the document each belongs to: what both engines must agree on.
CHUNKS = """
SELECT k.id, k.document_id, k.ordinal, k.text, d.source, d.content_hash, d.acl_groups
FROM chunks k JOIN documents d ON d.id = k.document_id JOIN collections c ON c.id = d.collection_id
WHERE c.name = %s ORDER BY k.id
"""
VECTORS = """
SELECT k.id, k.embedding::real[] FROM chunks k JOIN collections c ON c.id = k.collection_id
WHERE c.name = %s ORDER BY k.id
"""


def _files(root: Path) -> Path:
    root.mkdir()
    (root / "guide.md").write_text(
        "# Guide\n\n## Install\n" + "Run the installer and follow the prompts. " * 40
        + "\n\n## Configure\nSet VERITY_STORE__DSN to use an external database.\n")
    (root / "notes.txt").write_text("Payroll runs on the 25th of each month.\n\nLeave requests go "
                                    "to your manager first.")
    (root / "empty.md").write_text("")
    (root / "junk.pdf").write_bytes(b"%PDF-1.4 this is not a real pdf")
    return root


def _beir(root: Path) -> Path:
    root.mkdir()
    records = [{"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers fever in adults. " * 30},
               {"_id": "d2", "title": "Statins", "text": "Statins reduce LDL cholesterol."}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _rows(db: Database, sql: Any, collection: str) -> list[tuple[Any, ...]]:
    with db.pool.connection() as conn:
        return conn.execute(sql, (collection,)).fetchall()


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """One small local cluster for the module: Ray starts slowly on two busy cores."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(ray_engine.__file__).parents[1])}})
    yield ray
    ray.shutdown()


def test_ray_writes_the_chunks_the_local_engine_writes(
    ray_cluster: Any, store: PgvectorStore, database: Database,
    embedder: LocalEmbedder, tmp_path: Path, collection: str,
) -> None:
    pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
    files, beir = _files(tmp_path / "files"), _beir(tmp_path / "beir")
    attributes = DocumentAttributes(groups=("research",))
    local = pipeline.run([files], collection=collection, attributes=attributes)
    pipeline.ingest_documents(load_beir_corpus(beir, fingerprint=pipeline.fingerprint),
                              collection=collection, attributes=attributes)
    expected = _rows(database, CHUNKS, collection)
    local_vectors = dict(_rows(database, VECTORS, collection))

    # Same content hashes: after the local engine, the Ray engine finds nothing to do.
    again = ray_engine.ingest_files(pipeline, [files], collection=collection, attributes=attributes)
    assert sorted(again.unchanged) == ["files/guide.md", "files/notes.txt"]
    assert again.chunks_written == 0 and again.failed == local.failed

    store.delete_collection(collection)
    report = ray_engine.ingest_files(pipeline, [files], collection=collection, attributes=attributes,
                                     options=RayOptions(workers=1, batch_documents=2))
    beir_report = ray_engine.ingest_beir(pipeline, [beir], collection=collection,
                                         attributes=attributes)
    assert sorted(report.added) == sorted(local.added)
    assert sorted(report.failed) == sorted(local.failed)  # the empty file and the broken PDF
    assert sorted(beir_report.added) == ["d1", "d2"]
    assert _rows(database, CHUNKS, collection) == expected
    ray_vectors = dict(_rows(database, VECTORS, collection))
    # The engines batch differently; int8 ONNX (the default) quantizes each token's
    # activations on its own, so a chunk's vector does not move with its batch's other texts
    # (with one scale per batch it did: 0.991 was measured here).
    for chunk_id, vector in ray_vectors.items():
        assert float(np.dot(vector, local_vectors[chunk_id])) > 0.999


def test_without_ray_the_engine_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'verity\[ray\]'"):
        ray_engine.ingest_beir(None, [], collection="c")  # type: ignore[arg-type]  # never reached
