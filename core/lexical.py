"""Text analysis for BM25: lower-case words, English stopwords removed, Snowball-stemmed.

Documents and queries go through the same function, so their terms match.
PyStemmer (the C Snowball stemmer bm25s also uses) is a maintained library;
the tokenizer itself is a regular expression, which is all BM25 needs.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)

# The stopword list of Lucene's EnglishAnalyzer, which BEIR's BM25 baseline used.
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
})


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer("english")


def analyze(text: str) -> list[str]:
    """The BM25 terms of ``text``, in order, with repeats."""
    words = [w for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS]
    return list(_stemmer().stemWords(words)) if words else []


def term_frequencies(text: str) -> Counter[str]:
    """Term -> count for one chunk."""
    return Counter(analyze(text))
