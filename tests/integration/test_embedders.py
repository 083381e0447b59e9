"""The bundled embedder in float32 and in bfloat16: the same vectors, to within rounding."""

from __future__ import annotations

import numpy as np
import pytest

from verity.backends.embedders import SentenceTransformerEmbedder, use_bfloat16
from verity.core.settings import EmbedderSettings

pytestmark = pytest.mark.integration

TEXTS = [
    "Statins reduce LDL cholesterol and cardiovascular events.",
    "Set VERITY_STORE__DSN to use an external PostgreSQL server.",
    "Aspirin lowers fever in adults within an hour. " * 20,
]


def test_bfloat16_vectors_match_float32_ones() -> None:
    float32 = SentenceTransformerEmbedder(EmbedderSettings(backend="torch", precision="float32"))
    bfloat16 = SentenceTransformerEmbedder(EmbedderSettings(backend="torch", precision="bfloat16"))
    assert (float32.precision, bfloat16.precision) == ("float32", "bfloat16")
    a, b = float32.embed_documents(TEXTS), bfloat16.embed_documents(TEXTS)
    assert a.dtype == b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-3)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() > 0.999, cosines
    # and bfloat16 is not float32 under another name
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(("precision", "device", "expected"), [
    ("float32", "cpu", False), ("bfloat16", "cpu", True), ("auto", "mps", False),
])
def test_precision_choice(precision: str, device: str, expected: bool) -> None:
    assert use_bfloat16(precision, device=device) is expected
