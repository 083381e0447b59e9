"""Embedding quantization: numpy in, numpy out.

Thin wrappers over sentence-transformers' ``quantize_embeddings`` so the
precision is explicit and the int8 calibration ranges are returned to be
stored with the index; the sign bits are packed with numpy directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Literal, cast

import numpy as np

Precision = Literal["float32", "int8", "ubinary"]
_Quantize = Callable[..., np.ndarray | list[np.ndarray]]


def _st_quantize() -> _Quantize:
    try:  # sentence-transformers >= 5.2 moved the module
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:  # pragma: no cover - older releases
        # Imported by name: the installed release has no such module to type-check against.
        legacy = importlib.import_module("sentence_transformers.quantization")
        return cast(_Quantize, legacy.quantize_embeddings)
    return quantize_embeddings


def quantize_binary(embeddings: np.ndarray) -> np.ndarray:
    """Sign bits packed 8 per byte (``ubinary``): shape ``(n, ceil(d / 8))``, uint8.

    Bit ``i`` is 1 where component ``i`` is positive, the same rule as
    pgvector's ``binary_quantize``. This is what sentence-transformers' ``ubinary`` computes
    (``np.packbits(embeddings > 0)``), done here directly: it is on the query path of the
    in-memory dense index, where importing sentence-transformers would cost seconds.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"expected a 2-d array of embeddings, got shape {embeddings.shape}")
    return np.packbits(embeddings > 0, axis=1)


def int8_ranges(embeddings: np.ndarray) -> np.ndarray:
    """Calibration ranges for int8: per-dimension min (row 0) and max (row 1)."""
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError("int8 calibration needs a non-empty 2-d array of embeddings")
    return np.vstack([embeddings.min(axis=0), embeddings.max(axis=0)]).astype(np.float32)


def quantize_int8(embeddings: np.ndarray, *, ranges: np.ndarray) -> np.ndarray:
    """int8 codes with the given calibration ``ranges`` (see :func:`int8_ranges`)."""
    quantize_embeddings = _st_quantize()
    if ranges.shape != (2, embeddings.shape[1]):
        raise ValueError(f"ranges must have shape (2, {embeddings.shape[1]}), got {ranges.shape}")
    return np.asarray(
        quantize_embeddings(embeddings, precision="int8", ranges=ranges), dtype=np.int8
    )


def int8_affine(ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, offsets)`` such that ``code * steps + offsets`` approximates the float value.

    The inverse of :func:`quantize_int8` with the same ``ranges``: sentence-transformers
    maps ``x`` to ``floor((x - min) / step) - 128`` with ``step = (max - min) / 255``, so
    the centre of a code's bucket is ``(code + 128.5) * step + min``. A float query
    scored against int8 codes is then ``codes @ (query * steps) + query @ offsets``:
    int8 dot products with a rescaled query, plus one constant per query.

    Raises:
        ValueError: ``ranges`` is not of shape ``(2, dim)``.
    """
    if ranges.ndim != 2 or ranges.shape[0] != 2:
        raise ValueError(f"ranges must have shape (2, dim), got {ranges.shape}")
    ranges = ranges.astype(np.float32, copy=False)
    steps = (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps).astype(np.float32)
    return steps, (ranges[0] + 128.5 * steps).astype(np.float32)
