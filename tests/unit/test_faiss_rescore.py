"""The FAISS accelerator's pure parts: int8 dequantization, binary search, rescoring, files."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from verity.backends.quantize import int8_affine, int8_ranges, quantize_binary, quantize_int8
from verity.backends.stores.faiss_index import FaissIndex, Manifest
from verity.backends.stores.faiss_search import (
    build_binary_index,
    rescore_int8,
    search_binary,
    search_exact,
)

pytestmark = pytest.mark.unit


def _unit(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _manifest(n: int, dim: int) -> Manifest:
    return Manifest(tenant="default", collection="c", collection_id=1, dim=dim, chunk_count=n,
                    checksum="x")


def test_int8_codes_map_back_within_half_a_step() -> None:
    vectors = _unit(np.random.default_rng(0), 500, 64)
    ranges = int8_ranges(vectors)
    steps, offsets = int8_affine(ranges)
    restored = quantize_int8(vectors, ranges=ranges).astype(np.float32) * steps + offsets
    assert np.all(np.abs(restored - vectors) <= steps / 2 + 1e-6)
    with pytest.raises(ValueError, match="shape"):
        int8_affine(ranges[0])


@pytest.mark.parametrize("threshold", [0, 10_000])  # HNSW, flat
def test_binary_candidates_then_int8_rescoring_match_exact(threshold: int) -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 2000, 128)
    index = build_binary_index(quantize_binary(vectors), hnsw_threshold=threshold)
    codes = quantize_int8(vectors, ranges=int8_ranges(vectors))
    for row in range(20):
        query = vectors[row] + 0.5 * _unit(rng, 1, 128)[0]
        query /= np.linalg.norm(query)
        candidates = search_binary(index, quantize_binary(query[None])[0], candidates=100)
        assert len(candidates) == 100 and row in candidates
        rows, scores = rescore_int8(query, codes, candidates, ranges=int8_ranges(vectors), top_k=3)
        exact_rows, exact_scores = search_exact(vectors, query, top_k=3)
        assert rows[0] == exact_rows[0] == row
        assert scores[0] == pytest.approx(exact_scores[0], abs=5e-3)


def test_index_saves_loads_and_searches(tmp_path: Path) -> None:
    vectors = _unit(np.random.default_rng(2), 50, 32).astype(np.float16)
    ids = [f"doc-{i:05d}" for i in range(50)]
    index = FaissIndex.from_vectors(vectors, chunk_ids=ids, manifest=_manifest(50, 32),
                                    hnsw_threshold=1000)
    index.save(tmp_path)
    loaded = FaissIndex.load(tmp_path)
    assert loaded is not None and loaded.kind == "flat" and loaded.manifest == index.manifest
    assert isinstance(loaded.codes.base, mmap.mmap) and loaded.all_ids() == ids
    hits = loaded.search(vectors[7].astype(np.float32), top_k=3, oversample=5)
    assert hits[0].chunk_id == "doc-00007" and hits[0].score == pytest.approx(1.0, abs=1e-2)
    with pytest.raises(ValueError, match="32-d"):
        loaded.search(np.ones(33, np.float32), top_k=1, oversample=1)
    (tmp_path / "int8.npy").unlink()
    assert FaissIndex.load(tmp_path) is None


def test_empty_collection_gives_an_empty_index(tmp_path: Path) -> None:
    index = FaissIndex.from_vectors(np.zeros((0, 16), np.float32), chunk_ids=[],
                                    manifest=_manifest(0, 16), hnsw_threshold=1000)
    assert index.search(_unit(np.random.default_rng(3), 1, 16)[0], top_k=5, oversample=10) == []
    index.save(tmp_path)
    loaded = FaissIndex.load(tmp_path)
    assert loaded is not None and len(loaded) == 0


def test_sign_bits_are_sentence_transformers_ubinary() -> None:
    # quantize_binary packs the bits itself (no sentence-transformers import on the query
    # path); the codes must stay the ones sentence-transformers and pgvector make.
    from sentence_transformers.util.quantization import quantize_embeddings

    rng = np.random.default_rng(3)
    for dim in (13, 16, 384):
        vectors = rng.standard_normal((40, dim)).astype(np.float32)
        vectors[0] = 0.0  # zero is not positive: bit 0
        expected = np.asarray(quantize_embeddings(vectors, precision="ubinary"), dtype=np.uint8)
        assert np.array_equal(quantize_binary(vectors), expected)
        assert np.array_equal(quantize_binary(vectors.astype(np.float16)), expected)
    assert quantize_binary(np.zeros((0, 384), np.float32)).shape == (0, 48)
