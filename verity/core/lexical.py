"""Text analysis for BM25: lower-case words, English stopwords removed, Snowball-stemmed.

Documents and queries go through the same function, so their terms match.
PyStemmer (the C Snowball stemmer bm25s also uses) is a maintained library;
the tokenizer itself is a regular expression, which is all BM25 needs.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Protocol

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)

# Okapi BM25's parameters, chosen on SciFact's *train* queries (nDCG@10 over a k1 x b grid of
# {0.9, 1.2, 1.5} x {0.4, 0.6, 0.75}; docs/BENCHMARKS.md has the grid). The test queries played
# no part; Anserini's 0.9 / 0.4 and Lucene's 1.2 / 0.75 were both within 0.004 on train.
BM25_K1 = 1.2
BM25_B = 0.6

# The stopword list of Lucene's EnglishAnalyzer, which BEIR's BM25 baseline used.
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
})


class _Stemmer(Protocol):
    """The part of PyStemmer's ``Stemmer.Stemmer`` used here (PyStemmer ships no types)."""

    def stemWords(self, words: list[str]) -> list[str]: ...


@lru_cache(maxsize=1)
def _stemmer() -> _Stemmer:
    import Stemmer

    stemmer: _Stemmer = Stemmer.Stemmer("english")
    return stemmer


def analyze(text: str) -> list[str]:
    """The BM25 terms of ``text``, in order, with repeats."""
    words = [w for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS]
    return list(_stemmer().stemWords(words)) if words else []


def term_frequencies(text: str) -> Counter[str]:
    """Term -> count for one chunk."""
    return Counter(analyze(text))
