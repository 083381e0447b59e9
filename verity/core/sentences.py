"""Sentence splitting that survives the abbreviations of encyclopedic text.

A plain ``(?<=[.!?])\\s+`` split cuts "Col. David M. Westcott (ca. 1769 - 1841) was an
American politician" into four pieces, and CRAG's knowledge refinement then keeps
"1769 - 1841) was an American politician" without the name it is about. NLTK's Punkt
needs a trained model file that is not on PyPI, and a lead sentence is what matters
here, so the rule is small and explicit: end a sentence at ``.``, ``!`` or ``?`` (with
any closing quotes, brackets or ``[n]`` citation markers right after it) followed by an
upper-case letter, digit, quote or bracket, or at a CJK full stop, unless the word before
the stop is an initial ("M."), a known abbreviation ("Col.", "ca.", "Dr.") or the stop is
part of a dotted abbreviation ("U.S.").

This is the one splitter of the project: CRAG's strips, the citation check, the
faithfulness metric, context packing, the injection filter and the reranker's
pseudo-queries all cut text here, each choosing only what may follow a stop and whether
line breaks end sentences.
"""

from __future__ import annotations

import re

_CLOSERS = r"(?:[\"'”’)\]]|\[\d+(?:\s*,\s*\d+)*\])*"
_STARTS = r"[A-Z0-9\"'“‘`(\[À-Þ]"
_END_BEFORE_START = re.compile(rf"([.!?]){_CLOSERS}\s+(?={_STARTS})|[。！？]")
_END_BEFORE_ANY = re.compile(rf"([.!?]){_CLOSERS}\s+|[。！？]")
_LINE = re.compile(r"[^\n]+")
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


def split_sentences(text: str, *, before_any: bool = False, newlines: bool = False,
                    collapse: bool = True) -> list[str]:
    """The sentences of ``text``, abbreviations kept whole, blank ones dropped.

    Args:
        text: Any text.
        before_any: End a sentence at a stop followed by any word, lower-case ones too,
            not only before an upper-case letter, digit, quote or bracket.
        newlines: Also end a sentence at every line break.
        collapse: Collapse each sentence's whitespace to single spaces; with False each
            sentence is exactly as it stands in ``text`` (so it can be found there).

    Returns:
        The sentences in order, without surrounding whitespace.

    Example:
        >>> split_sentences("Col. David M. Westcott (ca. 1769) was a politician. He edited papers.")
        ['Col. David M. Westcott (ca. 1769) was a politician.', 'He edited papers.']
    """
    spans = sentence_spans(text, before_any=before_any, newlines=newlines)
    if collapse:
        return [" ".join(text[start:end].split()) for start, end in spans]
    return [text[start:end] for start, end in spans]


def sentence_spans(text: str, *, before_any: bool = False,
                   newlines: bool = False) -> list[tuple[int, int]]:
    """Where each sentence of ``text`` starts and ends, as ``(start, end)`` offsets.

    Takes the options of :func:`split_sentences`; ``text[start:end]`` is a sentence
    without surrounding whitespace, and the spans are in order and never overlap.
    """
    if not newlines:
        return _spans(text, 0, len(text), before_any=before_any)
    return [span for line in _LINE.finditer(text)
            for span in _spans(text, line.start(), line.end(), before_any=before_any)]


def _spans(text: str, start: int, stop: int, *, before_any: bool) -> list[tuple[int, int]]:
    """The sentence spans of ``text[start:stop]``, in offsets of ``text``."""
    ends = _END_BEFORE_ANY if before_any else _END_BEFORE_START
    spans = []
    for match in ends.finditer(text, start, stop):
        if match.group(1) == "." and _abbreviated(text[start:match.start()]):
            continue
        spans.append(_trimmed(text, start, match.end()))
        start = match.end()
    spans.append(_trimmed(text, start, stop))
    return [(s, e) for s, e in spans if s < e]


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` moved inwards past whitespace at either end."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _abbreviated(before: str) -> bool:
    """Whether a stop right after ``before`` belongs to an abbreviation or an initial."""
    found = _WORD_BEFORE.search(before)
    if not found:
        return False
    word = found.group(1).lower().strip(".")
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "David M. Westcott", "c. 1912"
    return word in ABBREVIATIONS or ("." in word and all(len(p) <= 2 for p in word.split(".")))
