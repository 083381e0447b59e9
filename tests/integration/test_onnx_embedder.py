"""The onnx embedder backend on the bundled model: its vectors, its export cache, and the
collections that refuse vectors of an incompatible precision."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import ValidationError

from ingest.pipeline import IngestPipeline
from verity.answering.runtime import Runtime
from verity.backends.embedders import SentenceTransformerEmbedder, build_embedder
from verity.backends.onnx_embedder import OnnxEmbedder
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.errors import ConfigError
from verity.core.settings import ChunkingSettings, EmbedderSettings, RetrievalSettings

pytestmark = pytest.mark.integration

TEXTS = [
    "Statins reduce LDL cholesterol and cardiovascular events.",
    "Set VERITY_STORE__DSN to use an external PostgreSQL server.",
    # longer than the model's 256 tokens: truncated the same way
    "Aspirin lowers fever in adults within an hour. " * 40,
    "short",
    "Mean pooling averages the token vectors under the attention mask, so padding adds nothing.",
]
QUERY = "does aspirin lower fever?"


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-data")


@pytest.fixture(scope="session")
def onnx_float32(onnx_dir: Path) -> OnnxEmbedder:
    # Batches of two: several batches, each padded to its own longest text.
    e = OnnxEmbedder(EmbedderSettings(backend="onnx", precision="float32", batch_size=2),
                     data_dir=onnx_dir)
    e.warm_up()
    return e


@pytest.fixture(scope="session")
def onnx_int8(onnx_dir: Path) -> OnnxEmbedder:
    e = OnnxEmbedder(EmbedderSettings(backend="onnx", precision="int8"), data_dir=onnx_dir)
    e.warm_up()
    return e


@pytest.fixture(scope="session")
def torch_float32() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(EmbedderSettings(backend="torch", precision="float32"))


def test_float32_vectors_match_sentence_transformers(
        onnx_float32: OnnxEmbedder, torch_float32: SentenceTransformerEmbedder) -> None:
    ours, theirs = onnx_float32.embed_documents(TEXTS), torch_float32.embed_documents(TEXTS)
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    assert ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(axis=1).min() > 0.9999
    assert float(onnx_float32.embed_query(QUERY) @ torch_float32.embed_query(QUERY)) > 0.9999
    assert (onnx_float32.name, onnx_float32.dim, onnx_float32.max_tokens) == (
        torch_float32.name, torch_float32.dim, torch_float32.max_tokens)
    assert onnx_float32.count_tokens(TEXTS[0]) == torch_float32.count_tokens(TEXTS[0])
    assert onnx_float32.embed_documents([]).shape == (0, 384)


def test_int8_vectors_stay_close_to_float32_ones(
        onnx_int8: OnnxEmbedder, torch_float32: SentenceTransformerEmbedder) -> None:
    ours, theirs = onnx_int8.embed_documents(TEXTS), torch_float32.embed_documents(TEXTS)
    cosines = (ours * theirs).sum(axis=1)
    # measured on 150 SQuAD paragraphs: mean 0.9989, lowest 0.9973 (one scale per batch gave
    # 0.9952 and 0.9877)
    assert cosines.min() > 0.995, cosines
    assert not np.allclose(ours, theirs, atol=1e-4)  # and int8 is not float32 under another name
    # int8 MatMul weights; the word embeddings (47 MB) stay float32, of float32's 90 MB in all
    assert onnx_int8.artifact.stat().st_size < 65e6


def test_an_int8_vector_does_not_depend_on_the_other_texts_of_its_batch(
        onnx_dir: Path, onnx_int8: OnnxEmbedder) -> None:
    """Each token's activations get their own scale, so batching changes no vector."""
    whole = OnnxEmbedder(EmbedderSettings(backend="onnx", precision="int8", batch_size=len(TEXTS)),
                         data_dir=onnx_dir)
    alone = np.stack([onnx_int8.embed_documents([text])[0] for text in TEXTS])
    assert np.allclose(whole.embed_documents(TEXTS), alone, atol=1e-5)


def test_seven_bit_weights_for_cpus_without_vnni_stay_close(
        tmp_path: Path, onnx_float32: OnnxEmbedder, onnx_int8: OnnxEmbedder) -> None:
    """The reduce_range export (7-bit weights), which only CPUs without VNNI get, also works."""
    import onnxruntime as ort

    from verity.backends.onnx_int8 import quantize_per_token

    target = tmp_path / "seven-bit.onnx"
    assert quantize_per_token(onnx_float32.artifact, target, reduce_range=True) == 36  # 6 layers x 6
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    encoded = onnx_float32.tokenizer(TEXTS[:2], padding=True, return_tensors="np")
    vectors = session.run(None, {i.name: encoded[i.name].astype(np.int64)
                                 for i in session.get_inputs()})[0]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert ((vectors * onnx_float32.embed_documents(TEXTS[:2])).sum(axis=1) > 0.99).all()
    assert not np.allclose(vectors, onnx_int8.embed_documents(TEXTS[:2]), atol=1e-4)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="side-by-side batches need 2 cores")
def test_batches_side_by_side_give_the_vectors_of_batches_in_turn(onnx_dir: Path) -> None:
    """Several batches run on one-thread sessions, one per core; the vectors do not change."""
    settings = EmbedderSettings(backend="onnx", precision="int8", batch_size=2)
    side_by_side, in_turn = (OnnxEmbedder(settings, data_dir=onnx_dir) for _ in range(2))
    in_turn._cores = 1  # the same batches, one after another on the session for queries
    texts = TEXTS * 3  # eight batches
    ours, theirs = side_by_side.embed_documents(texts), in_turn.embed_documents(texts)
    assert side_by_side._lanes is not None and in_turn._lanes is None
    assert side_by_side._lanes.qsize() == len(os.sched_getaffinity(0))  # every lane handed back
    assert np.allclose(ours, theirs, atol=1e-5)
    one_batch = TEXTS[:2]  # one batch: the session with a thread per core, as a query
    assert np.allclose(side_by_side.embed_documents(one_batch), in_turn.embed_documents(one_batch),
                       atol=1e-5)


def test_the_export_is_cached_and_keyed_by_its_settings(
        onnx_dir: Path, onnx_float32: OnnxEmbedder, onnx_int8: OnnxEmbedder) -> None:
    stamp = onnx_int8.artifact.stat().st_mtime_ns
    again = OnnxEmbedder(EmbedderSettings(precision="auto", batch_size=16), data_dir=onnx_dir)
    again.warm_up()
    # the same file, not exported again: auto is int8, and the batch size shapes no export
    assert (again.artifact, again.precision) == (onnx_int8.artifact, "int8")
    assert again.artifact.stat().st_mtime_ns == stamp
    assert onnx_int8.artifact != onnx_float32.artifact
    assert sorted(p.suffix for p in (onnx_dir / "models" / "onnx").iterdir()) == [
        ".json", ".json", ".onnx", ".onnx"]  # no partial files left behind


def test_a_corrupt_export_is_made_again(tmp_path: Path, onnx_float32: OnnxEmbedder,
                                        torch_float32: SentenceTransformerEmbedder) -> None:
    cache = tmp_path / "models" / "onnx"
    cache.mkdir(parents=True)
    for path in (onnx_float32.artifact, onnx_float32.artifact.with_suffix(".json")):
        shutil.copy(path, cache / path.name)
    copied = cache / onnx_float32.artifact.name
    with copied.open("r+b") as f:  # as a full disk or a bad copy would leave it
        f.truncate(copied.stat().st_size // 2)
    embedder = OnnxEmbedder(EmbedderSettings(precision="float32"), data_dir=tmp_path)
    assert embedder.artifact == copied
    assert copied.stat().st_size == onnx_float32.artifact.stat().st_size
    assert float(embedder.embed_query(QUERY) @ torch_float32.embed_query(QUERY)) > 0.9999


def test_the_factory_builds_each_backend_and_names_the_valid_ones(tmp_path: Path) -> None:
    # the default is onnx; nothing is loaded or exported until first use
    assert isinstance(build_embedder(EmbedderSettings(), data_dir=tmp_path), OnnxEmbedder)
    assert isinstance(build_embedder(EmbedderSettings(backend="torch"), data_dir=tmp_path),
                      SentenceTransformerEmbedder)
    unknown = EmbedderSettings.model_construct(backend="tensorflow")  # type: ignore[arg-type]  # on purpose
    with pytest.raises(ConfigError, match="torch or onnx"):
        build_embedder(unknown, data_dir=tmp_path)


@pytest.mark.parametrize(("backend", "precision"), [
    ("torch", "int8"), ("onnx", "bfloat16"),
])
def test_a_precision_the_backend_cannot_run_is_refused(
    backend: Literal["torch", "onnx"], precision: Literal["auto", "float32", "bfloat16", "int8"]
) -> None:
    with pytest.raises(ValidationError, match=precision):
        EmbedderSettings(backend=backend, precision=precision)


def test_onnx_runs_on_the_cpu_only() -> None:
    with pytest.raises(ValidationError, match="CPU"):
        EmbedderSettings(backend="onnx", device="cuda")
    # a GPU asked for without a backend gets torch, which runs there
    assert EmbedderSettings(device="cuda").backend == "torch"
    assert EmbedderSettings(device="cpu").backend == "onnx"


def test_a_collection_refuses_vectors_of_another_precision(
        store: PgvectorStore, collection: str) -> None:
    store.ensure_collection(collection, embed_model="all-MiniLM-L6-v2", embed_dim=384,
                            embed_backend="onnx", embed_precision="int8")
    with pytest.raises(ConfigError, match="holds int8 vectors made with the onnx backend"):
        store.ensure_collection(collection, embed_model="all-MiniLM-L6-v2", embed_dim=384,
                                embed_backend="torch", embed_precision="float32")
    # queries: int8 and float ones both search int8 documents (float ones rank better)
    store.check_vectors(collection, backend="onnx", precision="int8")
    store.check_vectors(collection, backend="onnx", precision="float32")


def test_float_vectors_of_either_backend_share_a_collection(
        store: PgvectorStore, collection: str) -> None:
    store.ensure_collection(collection, embed_model="all-MiniLM-L6-v2", embed_dim=384,
                            embed_backend="torch", embed_precision="bfloat16")
    store.ensure_collection(collection, embed_model="all-MiniLM-L6-v2", embed_dim=384,
                            embed_backend="onnx", embed_precision="float32")
    # the latest writer is recorded: an int8 embedder is now told to use onnx float32
    with pytest.raises(ConfigError, match="BACKEND=onnx and VERITY_EMBEDDER__PRECISION=float32"):
        store.check_vectors(collection, backend="onnx", precision="int8")


def test_ingesting_with_int8_into_a_float_collection_is_refused(
        store: PgvectorStore, collection: str, onnx_int8: OnnxEmbedder) -> None:
    store.ensure_collection(collection, embed_model=onnx_int8.name, embed_dim=onnx_int8.dim)
    pipeline = IngestPipeline(store=store, embedder=onnx_int8, chunking=ChunkingSettings())
    with pytest.raises(ConfigError, match="holds float32 vectors made with the torch backend"):
        pipeline.ingest_documents([], collection=collection)


def test_a_change_of_backend_changes_the_content_hash(
        store: PgvectorStore, onnx_float32: OnnxEmbedder, onnx_int8: OnnxEmbedder,
        torch_float32: SentenceTransformerEmbedder) -> None:
    chunking = ChunkingSettings()
    prints = {IngestPipeline(store=store, embedder=e, chunking=chunking).fingerprint
              for e in (onnx_float32, onnx_int8, torch_float32)}
    assert len(prints) == 3
    # torch's is what it was before the backend setting, so nothing is re-embedded on upgrade
    assert "all-MiniLM-L6-v2|200|32|v2" in prints


def _notes(root: Path) -> Path:
    root.mkdir()
    (root / "fever.md").write_text("# Fever\n\nAspirin lowers fever in adults within an hour.\n")
    return root


def test_a_query_embedder_of_an_incompatible_precision_is_refused(
        retrieval_runtime: Runtime, store: PgvectorStore, collection: str, tmp_path: Path,
        onnx_dir: Path, torch_float32: SentenceTransformerEmbedder) -> None:
    IngestPipeline(store=store, embedder=torch_float32, chunking=ChunkingSettings()).run(
        [_notes(tmp_path / "notes")], collection=collection)
    int8_queries = OnnxEmbedder(EmbedderSettings(backend="onnx", precision="int8",
                                                 query_precision="int8"), data_dir=onnx_dir)
    assert int8_queries.query_precision == "int8"
    rag = replace(retrieval_runtime, embedder=int8_queries).rag()
    dense_modes: tuple[Literal["dense", "hybrid"], ...] = ("dense", "hybrid")
    for mode in dense_modes:
        with pytest.raises(ConfigError, match="holds float32 vectors made with the torch backend.*"
                                              "VERITY_EMBEDDER__PRECISION=float32"):
            rag.retrieve(QUERY, collection=collection, settings=RetrievalSettings(mode=mode))
    # BM25 embeds nothing, so it still answers; the matching embedder searches densely
    assert rag.retrieve(QUERY, collection=collection, settings=RetrievalSettings(mode="bm25"))
    hits = replace(retrieval_runtime, embedder=torch_float32).rag().retrieve(
        QUERY, collection=collection)
    assert hits and "Aspirin" in hits[0].chunk.text


def test_float_queries_search_int8_documents(
        retrieval_runtime: Runtime, store: PgvectorStore, collection: str, tmp_path: Path,
        onnx_int8: OnnxEmbedder, torch_float32: SentenceTransformerEmbedder) -> None:
    # The default: int8 documents, float32 queries (a second, float export of the model).
    assert (onnx_int8.precision, onnx_int8.query_precision) == ("int8", "float32")
    query = onnx_int8.embed_query(QUERY)
    assert float(query @ torch_float32.embed_query(QUERY)) > 0.9999
    IngestPipeline(store=store, embedder=onnx_int8, chunking=ChunkingSettings()).run(
        [_notes(tmp_path / "notes")], collection=collection)
    for embedder in (onnx_int8, torch_float32):
        hits = replace(retrieval_runtime, embedder=embedder).rag().retrieve(
            QUERY, collection=collection, settings=RetrievalSettings(mode="dense"))
        assert hits and "Aspirin" in hits[0].chunk.text


def test_a_query_embedder_of_another_model_is_refused(
        retrieval_runtime: Runtime, store: PgvectorStore, collection: str) -> None:
    # same dimension, so only the recorded model name tells the vectors apart
    store.ensure_collection(collection, embed_model="another-384-d-model", embed_dim=384)
    with pytest.raises(ConfigError, match="holds embeddings of another-384-d-model.*"
                                          "VERITY_EMBEDDER__MODEL"):
        retrieval_runtime.rag().retrieve(QUERY, collection=collection)


def test_changing_the_backend_re_embeds_on_the_next_ingest(
        store: PgvectorStore, collection: str, tmp_path: Path, onnx_float32: OnnxEmbedder,
        torch_float32: SentenceTransformerEmbedder) -> None:
    notes, chunking = _notes(tmp_path / "notes"), ChunkingSettings()
    onnx = IngestPipeline(store=store, embedder=onnx_float32, chunking=chunking)
    assert onnx.run([notes], collection=collection).added == ["notes/fever.md"]
    assert onnx.run([notes], collection=collection).unchanged == ["notes/fever.md"]
    again = IngestPipeline(store=store, embedder=torch_float32, chunking=chunking).run(
        [notes], collection=collection)
    assert again.updated == ["notes/fever.md"] and again.chunks_written == 1
    # the collection now records the backend that made its vectors
    with pytest.raises(ConfigError, match="made with the torch backend"):
        store.check_vectors(collection, backend="onnx", precision="int8")
