"""FAISS search kernels: build a binary index, search it, rescore candidates.

Pure functions over numpy arrays (sentence-transformers' ``ubinary`` sign bits and int8
codes), kept apart from the per-collection index and its files
(:mod:`verity.backends.stores.faiss_index`), so each step can be measured and tested
alone, and :func:`search_exact` is the float32 reference the tests and benchmarks use.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from verity.backends.quantize import int8_affine, quantize_binary, quantize_int8

BinaryKind = Literal["flat", "hnsw"]

_QUANTIZE_BLOCK = 65_536


def load_faiss() -> Any:
    """The faiss module, or an ImportError that says what to install."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError(
            "the FAISS accelerator needs the faiss package: pip install faiss-cpu "
            "(or reinstall Verity with its dependencies: pip install -e .)"
        ) from e
    return faiss


# --- Pure functions: build, search, rescore --------------------------------------------


def build_binary_index(bits: np.ndarray, *, hnsw_threshold: int, hnsw_m: int = 16) -> Any:
    """A FAISS binary index over packed sign bits (rows of :func:`quantize_binary`).

    Args:
        bits: ``(n, nbytes)`` uint8 codes; padding bits past the dimension are 0 for
            every row, so they never change a Hamming distance.
        hnsw_threshold: from this many rows up, an ``IndexBinaryHNSW``; below, an
            exhaustive ``IndexBinaryFlat``.
        hnsw_m: HNSW graph degree.

    Returns:
        The filled FAISS index.
    """
    faiss = load_faiss()
    if bits.ndim != 2 or bits.dtype != np.uint8:
        raise ValueError(f"expected (n, nbytes) uint8 codes, got {bits.dtype} {bits.shape}")
    nbits = bits.shape[1] * 8
    if len(bits) >= hnsw_threshold:
        index = faiss.IndexBinaryHNSW(nbits, hnsw_m)
    else:
        index = faiss.IndexBinaryFlat(nbits)
    if len(bits):
        index.add(np.ascontiguousarray(bits))
    return index


def binary_kind(index: Any) -> BinaryKind:
    """``hnsw`` or ``flat``: which kind of binary index this is."""
    return "hnsw" if hasattr(index, "hnsw") else "flat"


def search_binary(index: Any, query_bits: np.ndarray, *, candidates: int, ef_search: int = 64) -> np.ndarray:
    """Rows of the ``candidates`` codes nearest to one query code by Hamming distance.

    Args:
        index: from :func:`build_binary_index`.
        query_bits: the query's packed sign bits, ``(nbytes,)`` uint8.
        candidates: how many rows to return (fewer if the index is smaller).
        ef_search: HNSW search breadth; raised to ``candidates`` (ignored by flat indexes).

    Returns:
        int64 row numbers, nearest first.
    """
    k = min(candidates, index.ntotal)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if binary_kind(index) == "hnsw":
        index.hnsw.efSearch = max(ef_search, k)
    _, rows = index.search(query_bits.reshape(1, -1), k)
    found: np.ndarray = rows[0]
    return found[found >= 0]


def rescore_int8(
    query: np.ndarray, codes: np.ndarray, rows: np.ndarray, *, ranges: np.ndarray, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank candidate rows by the float query's dot product with their int8 codes.

    The codes are mapped back to the centres of their buckets (:func:`int8_affine`),
    so the scores approximate cosine similarities, not just their order.

    Args:
        query: the float query, ``(dim,)``, unit length.
        codes: all int8 codes, ``(n, dim)`` (a memory map is fine: only ``rows`` are read).
        rows: candidate row numbers.
        ranges: the calibration ranges the codes were made with.
        top_k: how many to keep.

    Returns:
        ``(rows, scores)`` of the best ``top_k`` candidates, best first.
    """
    steps, offsets = int8_affine(ranges)
    query = query.astype(np.float32, copy=False)
    rows = np.sort(rows)  # ascending reads are kinder to a memory map
    candidate_codes = np.asarray(codes[rows], dtype=np.float32)
    scores = candidate_codes @ (query * steps) + float(query @ offsets)
    return _best(rows, scores, top_k)


def rescore_float(
    query: np.ndarray, vectors: np.ndarray, rows: np.ndarray, *, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank rows by exact dot product; ``vectors[i]`` is the float vector of ``rows[i]``."""
    scores = vectors.astype(np.float32, copy=False) @ query.astype(np.float32, copy=False)
    return _best(rows, scores, top_k)


def search_exact(vectors: np.ndarray, query: np.ndarray, *, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: exact float32 inner-product search over all ``vectors``."""
    return rescore_float(query, vectors, np.arange(len(vectors)), top_k=top_k)


def _best(rows: np.ndarray, scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(top_k, len(rows))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
    order = part[np.argsort(-scores[part], kind="stable")]
    return rows[order].astype(np.int64), scores[order].astype(np.float32)


def quantize_blocks(vectors: np.ndarray, *, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ubinary bits, int8 codes)`` of ``vectors``, converted a block at a time.

    Converting in blocks keeps the float32 copies small when ``vectors`` is float16.
    """
    n, dim = vectors.shape
    bits = np.empty((n, (dim + 7) // 8), dtype=np.uint8)
    codes = np.empty((n, dim), dtype=np.int8)
    for start in range(0, n, _QUANTIZE_BLOCK):
        block = np.asarray(vectors[start:start + _QUANTIZE_BLOCK], dtype=np.float32)
        bits[start:start + len(block)] = quantize_binary(block)
        codes[start:start + len(block)] = quantize_int8(block, ranges=ranges)
    return bits, codes
