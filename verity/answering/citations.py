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

from verity.core.lexical import analyze
from verity.core.sentences import split_sentences

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


def content_words(text: str) -> set[str]:
    """The stemmed BM25 terms of ``text`` (stopwords removed), as a set."""
    return {w for w in analyze(text) if len(w) > 1 and w not in _FILLER}


# Words that carry no evidence in an answer sentence, beyond BM25's stopwords.
_FILLER = frozenset({"accord", "sourc", "document", "can", "do", "you", "your", "i", "we", "also"})


def support(sentence: str, source_text: str) -> float:
    """Share of the sentence's content words that occur in the source (0..1)."""
    words = content_words(sentence)
    if not words:
        return 0.0
    return len(words & content_words(source_text)) / len(words)


def attribute(text: str, sources: Sequence[str], *, min_support: float = 0.5) -> str:
    """Append ``[n]`` to each sentence without a marker that source ``n`` (1-based) supports."""
    out = []
    for sentence in split_sentences(text, collapse=False):
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


def best_support(text: str, sources: Sequence[str]) -> tuple[int, float]:
    """The 0-based index of the source that best supports ``text`` as a whole, and its support."""
    if not sources:
        return -1, 0.0
    scores = [support(text, s) for s in sources]
    best = max(range(len(sources)), key=scores.__getitem__)
    return best, scores[best]
