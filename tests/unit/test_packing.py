"""Context packing: sources in rank order within the budget, the first misfit cut by sentences."""

from __future__ import annotations

import pytest

from verity.answering.packing import MIN_TRUNCATED, pack_sources, truncate
from verity.backends.tokenizers import EstimateCounter
from verity.core.types import Citation

pytestmark = pytest.mark.unit


def words(text: str) -> int:
    """A counter that is easy to reason about: one token per word."""
    return len(text.split())


def source(n: int, text: str) -> Citation:
    return Citation(n=n, document=f"doc{n}", chunk_id=f"c{n}", text=text)


def sentences(n: int, *, each: int = 10, tag: str = "w") -> str:
    return " ".join(" ".join([f"{tag}{i}"] * (each - 1)) + f" end{i}." for i in range(n))


def test_everything_fits_and_order_is_kept() -> None:
    given = [source(i, sentences(2)) for i in range(1, 4)]
    packed = pack_sources(given, budget=100, cost=lambda s: words(s.text) + 5, count=words)
    assert [s.chunk_id for s in packed.sources] == ["c1", "c2", "c3"]
    assert packed.used == 3 * 25 and packed.dropped == 0 and packed.truncated is None


def test_the_first_misfit_is_cut_at_a_sentence_boundary_and_the_rest_dropped() -> None:
    given = [source(1, sentences(4)), source(2, sentences(6, tag="x")), source(3, sentences(1))]
    # 45 for the first (40 + 5 wrapper); 40 left: the wrapper (5) and three sentences (30).
    packed = pack_sources(given, budget=85, cost=lambda s: words(s.text) + 5, count=words)
    assert [s.chunk_id for s in packed.sources] == ["c1", "c2"]
    cut = packed.sources[1].text
    assert cut.endswith("end2.") and cut == sentences(3, tag="x")
    assert packed.truncated == 2 and packed.dropped == 1 and packed.used <= 85


def test_a_highly_ranked_source_is_never_dropped_for_a_shorter_lower_one() -> None:
    given = [source(1, sentences(20)), source(2, "short one.")]
    packed = pack_sources(given, budget=60, cost=lambda s: words(s.text) + 5, count=words)
    assert [s.chunk_id for s in packed.sources] == ["c1"]
    assert packed.truncated == 1 and words(packed.sources[0].text) <= 55


def test_sources_are_renumbered_from_one() -> None:
    given = [source(7, "a b c."), source(3, "d e f.")]
    packed = pack_sources(given, budget=100, cost=lambda s: words(s.text), count=words)
    assert [s.n for s in packed.sources] == [1, 2]


def test_a_sentence_longer_than_the_budget_is_cut_by_words_with_an_ellipsis() -> None:
    text = " ".join(f"w{i}" for i in range(100)) + "."
    cut = truncate(text, budget=40, count=words)
    assert cut.endswith(" …") and words(cut) <= 40 and cut.startswith("w0 w1")


def test_too_little_room_gives_nothing_rather_than_a_scrap() -> None:
    assert truncate(sentences(5), budget=MIN_TRUNCATED - 1, count=words) == ""
    packed = pack_sources([source(1, sentences(5))], budget=10, cost=lambda s: words(s.text),
                          count=words)
    assert packed.sources == [] and packed.dropped == 1


def test_the_estimate_over_counts_english() -> None:
    text = "The navy issued lemon juice to every sailor from 1795 onwards, against scurvy."
    # About 17 tokens for a BPE tokenizer; the estimate must not under-count.
    assert EstimateCounter().count(text) >= 20
    assert EstimateCounter().count("") == 0


def test_a_cut_never_ends_at_an_abbreviation() -> None:
    text = "Col. A. Smith " + " ".join(["w"] * 30) + " end. Next sentence here."
    cut = truncate(text, budget=MIN_TRUNCATED, count=words)
    assert cut.startswith("Col. A. Smith w") and cut.endswith(" …") and words(cut) <= MIN_TRUNCATED
