"""Property tests (hypothesis) of the pure parts a hostile document or model answer reaches:
the splitter, the quantizers, rank fusion, the citation checker and the PII masker."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from verity.answering.citations import check_citations
from verity.answering.fusion import reciprocal_rank_fusion, weighted_fusion
from verity.answering.pii import PiiVault
from verity.backends.quantize import int8_ranges, quantize_binary, quantize_int8
from verity.core.types import Chunk, Document, ScoredChunk, Section

pytestmark = pytest.mark.unit

# Text with the characters hostile input favours: brackets, digits, @, separators, NULs,
# right-to-left marks and astral-plane characters.
TEXT = st.text(alphabet=st.sampled_from(list("ab [],.@+-0123456789<>_\n\t \x00\u200f😀ÄIBAN")) |
               st.characters(), max_size=300)


# --- The PII masker ------------------------------------------------------------------------

PII_PARTS = st.sampled_from(["ana@example.com", "+44 20 7946 0958", "4111 1111 1111 1111",
                             "GB82 WEST 1234 5698 7654 32", "12345678901", " and ", ", ", "\n"])


@given(st.lists(PII_PARTS | TEXT, max_size=12).map("".join))
def test_masking_then_unmasking_gives_the_text_back(text: str) -> None:
    vault = PiiVault()
    assert vault.unmask(vault.mask(text)) == text


@given(st.lists(PII_PARTS, min_size=1, max_size=8).map("".join), st.data())
def test_a_streamed_answer_is_unmasked_as_a_whole_one_is(text: str, data: st.DataObject) -> None:
    vault = PiiVault()
    masked = vault.mask(text)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(masked)), max_size=10)))
    deltas = [masked[a:b] for a, b in zip([0, *cuts], [*cuts, len(masked)], strict=True)]
    assert "".join(vault.unmask_stream(deltas)) == vault.unmask(masked) == text


# --- The citation checker ------------------------------------------------------------------

MARKERS = st.builds(lambda ns: "[" + ", ".join(map(str, ns)) + "]",
                    st.lists(st.integers(-3, 30), min_size=1, max_size=4))


@given(st.lists(MARKERS | TEXT, max_size=10).map(" ".join), st.integers(0, 12))
def test_checked_citations_name_only_given_sources_and_are_stable(text: str, n: int) -> None:
    checked = check_citations(text, n_sources=n)
    assert all(1 <= c <= n for c in checked.cited)
    assert not set(checked.cited) & set(checked.invalid)
    again = check_citations(checked.text, n_sources=n)
    assert again.text == checked.text and again.invalid == ()
    assert set(again.cited) <= set(checked.cited)


# --- Rank fusion ---------------------------------------------------------------------------


def _hits(ids: list[str], scores: list[float]) -> list[ScoredChunk]:
    return [ScoredChunk(chunk=Chunk(id=i, document_id=f"d-{i}", ordinal=0, text=i), score=s,
                        source=f"{i}.md") for i, s in zip(ids, scores, strict=False)]


RANKING = st.lists(st.sampled_from([f"c{i}" for i in range(12)]), unique=True, max_size=12).flatmap(
    lambda ids: st.lists(st.floats(-1e6, 1e6), min_size=len(ids), max_size=len(ids)).map(
        lambda scores: _hits(ids, sorted(scores, reverse=True))))


@given(st.lists(RANKING, min_size=1, max_size=3), st.none() | st.integers(1, 15))
def test_fusion_keeps_each_chunk_once_in_score_order(rankings: list[list[ScoredChunk]],
                                                     top_k: int | None) -> None:
    union = {h.chunk.id for r in rankings for h in r}
    weights = [1.0 / len(rankings)] * len(rankings)
    for fused in (reciprocal_rank_fusion(rankings, top_k=top_k),
                  weighted_fusion(rankings, weights=weights, top_k=top_k)):
        ids = [h.chunk.id for h in fused]
        assert len(ids) == len(set(ids)) == min(len(union), top_k or len(union))
        assert set(ids) <= union
        assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)


# --- The quantizers ------------------------------------------------------------------------

VECTORS = st.integers(1, 8).flatmap(lambda n: st.integers(1, 40).flatmap(
    lambda d: arrays(np.float32, (n, d), elements=st.floats(-1, 1, width=32))))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # the first call imports
@given(VECTORS)
def test_binary_codes_are_the_sign_bits_and_int8_codes_keep_order(vectors: np.ndarray) -> None:
    bits = np.unpackbits(quantize_binary(vectors), axis=1)[:, : vectors.shape[1]]
    assert np.array_equal(bits, (vectors > 0).astype(np.uint8))
    codes = quantize_int8(vectors, ranges=int8_ranges(vectors)).astype(int)
    assert codes.min() >= -128 and codes.max() <= 127
    for dim in range(vectors.shape[1]):  # a larger value never gets a smaller code
        order = np.argsort(vectors[:, dim], kind="stable")
        assert np.all(np.diff(codes[order, dim]) >= 0)


# --- The splitter --------------------------------------------------------------------------


@cache
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    from verity.backends.models import resolve_embedder
    from verity.core.settings import BUNDLED_EMBEDDER

    return AutoTokenizer.from_pretrained(str(resolve_embedder(BUNDLED_EMBEDDER)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example("a \ud800 b", 16)  # a lone surrogate, which the tokenizer refuses
@given(st.lists(TEXT | st.sampled_from(["\n\n", ". ", "word " * 40]), max_size=12).map("".join),
       st.integers(16, 64))
def test_chunks_fit_the_token_budget_and_come_from_the_text(text: str, budget: int) -> None:
    from ingest.splitter import TokenSplitter, valid_text

    tokenizer = _tokenizer()
    splitter = TokenSplitter(tokenizer, chunk_tokens=budget, overlap_tokens=budget // 4)
    chunks = splitter.split(Document(source="s", title="t", sections=(Section(text),),
                                     content_hash="h"),
                            doc_id="d")
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.text in valid_text(text)
        assert chunk.token_count <= budget


def test_a_lone_surrogate_is_split_as_a_replacement_character() -> None:
    from ingest.splitter import TokenSplitter

    splitter = TokenSplitter(_tokenizer(), chunk_tokens=32, overlap_tokens=8)
    chunks = splitter.split(Document(source="s", title="t", content_hash="h",
                                     sections=(Section("broken \ud800 text"),)), doc_id="d")
    assert [c.text for c in chunks] == ["broken \ufffd text"]
