"""Citations: validate the model's ``[n]`` markers and attribute sentences that have none.

Strong models cite as told; small local models often answer correctly but
without markers (the bundled 0.5B model does). So every sentence without a
valid marker is attributed to the source that contains the largest share of
its content words, when that share is high enough; sentences no source
supports stay uncited. No citation ever points at a source the model was not
given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class CheckedCitations:
    text: str
    cited: tuple[int, ...]
    invalid: tuple[int, ...]


def check_citations(text: str, *, n_sources: int) -> CheckedCitations:
    """Keep markers that name one of the ``n_sources`` sources; remove the others.

    ``[2, 9]`` with three sources becomes ``[2]`` and 9 is reported invalid.
    Returns the cleaned text, the cited numbers in first-seen order, and the
    invalid numbers.
    """
    cited: list[int] = []
    invalid: list[int] = []

    def keep(match: re.Match[str]) -> str:
        numbers = [int(x) for x in re.split(r"\s*,\s*", match.group(1))]
        valid = [n for n in numbers if 1 <= n <= n_sources]
        for n in numbers:
            bucket = cited if n in valid else invalid
            if n not in bucket:
                bucket.append(n)
        return "".join(f"[{n}]" for n in valid)

    cleaned = _MARKER.sub(keep, text)
    cleaned = re.sub(r"[ \t]+([.,;:])", r"\1", cleaned)
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned).strip()
    return CheckedCitations(text=cleaned, cited=tuple(cited), invalid=tuple(invalid))


_WORD = re.compile(r"[a-z0-9_]+(?:[.-][a-z0-9_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(\[])")
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "has",
    "have", "how", "i", "if", "in", "is", "it", "its", "of", "on", "or", "so", "that", "the",
    "their", "then", "there", "these", "this", "to", "was", "what", "when", "where", "which",
    "who", "why", "will", "with", "you", "your", "according", "source", "sources",
})


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` that carry meaning (stopwords removed)."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1}


def support(sentence: str, source_text: str) -> float:
    """Share of the sentence's content words that occur in the source (0..1)."""
    words = content_words(sentence)
    if not words:
        return 0.0
    return len(words & content_words(source_text)) / len(words)


def attribute(text: str, sources: Sequence[str], *, min_support: float = 0.6) -> str:
    """Append ``[n]`` to each sentence without a marker that source ``n`` (1-based) supports."""
    out = []
    for sentence in _SENTENCE_END.split(text.strip()):
        if not sentence or _MARKER.search(sentence) or not sources:
            out.append(sentence)
            continue
        scores = [support(sentence, s) for s in sources]
        best = max(range(len(sources)), key=scores.__getitem__)
        if scores[best] >= min_support and len(content_words(sentence)) >= 2:
            end = len(sentence.rstrip(".!?"))
            sentence = f"{sentence[:end]} [{best + 1}]{sentence[end:]}"
        out.append(sentence)
    return " ".join(out)
