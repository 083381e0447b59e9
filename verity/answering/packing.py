"""Context packing: fit the numbered sources into the generator's token budget.

The budget is the model's context window minus the prompt around the sources
(system rules, the question, the instructions), the answer's ``max_tokens`` and
a small margin for the chat template. Sources are taken in rank order while
they fit; the first one that does not fit is cut at a sentence boundary
(never a highly ranked source dropped to make room for a lower one), and the
rest are left out. Every count comes from a
:class:`~verity.core.protocols.TokenCounter`: the model's own tokenizer where it
can be had, else a conservative estimate (:mod:`verity.backends.tokenizers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from verity.core.sentences import split_sentences
from verity.core.types import Citation

TEMPLATE_MARGIN = 32  # chat-template tokens per request (role markers, separators)
MIN_TRUNCATED = 24  # a cut source shorter than this many tokens is not worth giving


@dataclass(frozen=True, slots=True)
class Packed:
    """The sources given to the model and how the budget was spent."""

    sources: list[Citation]
    budget: int
    used: int
    dropped: int
    truncated: int | None  # the number of the source that was cut, if one was

    def trace(self, counter: str) -> dict[str, object]:
        return {"budget_tokens": self.budget, "source_tokens": self.used,
                "sources_given": len(self.sources), "sources_dropped": self.dropped,
                "truncated_source": self.truncated, "token_counter": counter}


def pack_sources(sources: Sequence[Citation], *, budget: int,
                 cost: Callable[[Citation], int], count: Callable[[str], int]) -> Packed:
    """Sources in rank order while they fit in ``budget`` tokens; the first misfit is cut.

    Args:
        sources: numbered sources, best first.
        budget: tokens available to all sources together.
        cost: tokens one source takes in the prompt, wrapper included.
        count: tokens of a bare piece of text (used to cut a source by sentences).

    Returns:
        The sources to give, renumbered 1..n in the same order.
    """
    given: list[Citation] = []
    used = 0
    truncated = None
    for source in sources:
        need = cost(source)
        if used + need <= budget:
            given.append(source)
            used += need
            continue
        wrapper = need - count(source.text)
        cut = truncate(source.text, budget=budget - used - wrapper, count=count)
        if cut:
            given.append(replace(source, text=cut))
            used += wrapper + count(cut)
            truncated = len(given)
        break
    renumbered = [replace(s, n=i) for i, s in enumerate(given, start=1)]
    return Packed(renumbered, budget=budget, used=used, dropped=len(sources) - len(given),
                  truncated=truncated)


def truncate(text: str, *, budget: int, count: Callable[[str], int]) -> str:
    """The longest run of whole sentences from the start of ``text`` within ``budget`` tokens.

    When even the first sentence is too long, it is cut at a word boundary and
    marked with an ellipsis. Returns "" when fewer than ``MIN_TRUNCATED``
    tokens are available.
    """
    if budget < MIN_TRUNCATED:
        return ""
    kept: list[str] = []
    for sentence in split_sentences(text, before_any=True, collapse=False):
        candidate = " ".join([*kept, sentence])
        if count(candidate) > budget:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept)
    words = text.split()
    low, high = 0, len(words)
    while low < high:  # the most words whose prefix (with the ellipsis) fits
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid]) + " …") <= budget:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low]) + " …" if low else ""
