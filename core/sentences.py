"""Sentence splitting that survives the abbreviations of encyclopedic text.

A plain ``(?<=[.!?])\\s+`` split cuts "Col. David M. Westcott (ca. 1769 - 1841) was an
American politician" into four pieces, and CRAG's knowledge refinement then keeps
"1769 - 1841) was an American politician" without the name it is about. NLTK's Punkt
needs a trained model file that is not on PyPI, and a lead sentence is what matters
here, so the rule is small and explicit: end a sentence at ``.``, ``!`` or ``?`` (or a
CJK full stop) followed by an upper-case letter, digit, quote or bracket, unless the
word before the stop is an initial ("M."), a known abbreviation ("Col.", "ca.", "Dr.")
or the stop is part of a dotted abbreviation ("U.S.").
"""

from __future__ import annotations

import re

_END = re.compile(r"([.!?])[\"'”’)\]]*\s+(?=[A-Z0-9\"'“‘(\[À-Þ])|[。！？]")
_WORD_BEFORE = re.compile(r"([\w.]+)[.!?]?$")
# Titles, dating and reference abbreviations that end with a stop but not a sentence. Dotted
# ones ("e.g", "U.S") need no entry: any word of one- or two-letter parts counts.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "rev", "ven", "hon", "sr", "jr", "st", "mt", "ft",
    "col", "gen", "lt", "capt", "cpt", "cmdr", "adm", "maj", "sgt", "cpl", "gov", "sen",
    "rep", "pres", "fr", "br", "msgr", "ca", "c", "fl", "b", "d", "r", "cf", "vs",
    "no", "nos", "vol", "vols", "pp", "p", "ch", "fig", "figs", "eq", "ed", "eds",
    "approx", "inc", "ltd", "co", "corp", "bros", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "al", "op",
})


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (whitespace collapsed), abbreviations kept whole.

    Example:
        >>> split_sentences("Col. David M. Westcott (ca. 1769) was a politician. He edited papers.")
        ['Col. David M. Westcott (ca. 1769) was a politician.', 'He edited papers.']
    """
    flat = " ".join(text.split())
    sentences, start = [], 0
    for match in _END.finditer(flat):
        if match.group(1) == "." and _abbreviated(flat[start:match.start()]):
            continue
        sentence = flat[start:match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    if flat[start:].strip():
        sentences.append(flat[start:].strip())
    return sentences


def _abbreviated(before: str) -> bool:
    """Whether a stop right after ``before`` belongs to an abbreviation or an initial."""
    found = _WORD_BEFORE.search(before)
    if not found:
        return False
    word = found.group(1).lower().strip(".")
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "David M. Westcott", "c. 1912"
    return word in ABBREVIATIONS or ("." in word and all(len(p) <= 2 for p in word.split(".")))
