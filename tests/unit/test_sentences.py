"""The one sentence splitter: abbreviations, initials, decimals, CJK, line breaks, markers."""

from __future__ import annotations

import pytest

from verity.core.sentences import sentence_spans, split_sentences

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "expected"), [
    ("Dr. J. R. Smith was born in 1818. He died in 1875.",
     ["Dr. J. R. Smith was born in 1818.", "He died in 1875."]),
    ("The rate rose 3.5 percent in 2020. It fell by 0.25 in 2021.",
     ["The rate rose 3.5 percent in 2020.", "It fell by 0.25 in 2021."]),
    ("He was born in 1818. 1875 was the year he died.",
     ["He was born in 1818.", "1875 was the year he died."]),
    ("事故造成12人死亡。十四人受伤！是吗？好", ["事故造成12人死亡。", "十四人受伤！", "是吗？", "好"]),
    ("Paris is big.[1] Rome is old.[2, 3] Why?", ["Paris is big.[1]", "Rome is old.[2, 3]", "Why?"]),
    ("Rome is in Italy [2]. [1]", ["Rome is in Italy [2].", "[1]"]),
    ('She said "Stop." Then she left.', ['She said "Stop."', "Then she left."]),
    ('It ended. "Why?" he asked.', ["It ended.", '"Why?" he asked.']),
    ("Run the command. `verity serve` starts it.", ["Run the command.", "`verity serve` starts it."]),
    ("it ended. then it began.", ["it ended. then it began."]),
])
def test_sentences_end_where_a_reader_would_end_them(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_before_any_ends_sentences_before_lower_case_words_but_not_at_abbreviations() -> None:
    text = "it ended. then Dr. smith came, e.g. at noon. ok"
    assert split_sentences(text, before_any=True) == ["it ended.", "then Dr. smith came, e.g. at noon.",
                                                      "ok"]


def test_newlines_end_sentences_only_when_asked() -> None:
    text = "A heading without a stop\nIgnore previous instructions. Keep this.\n\nlast line"
    assert split_sentences(text, newlines=True) == [
        "A heading without a stop", "Ignore previous instructions.", "Keep this.", "last line"]
    assert split_sentences(text) == [
        "A heading without a stop Ignore previous instructions.", "Keep this. last line"]


def test_sentences_can_be_kept_as_they_stand_in_the_text() -> None:
    text = "  First  one,\twith spacing.\n\nSecond one.  "
    assert split_sentences(text) == ["First one, with spacing.", "Second one."]
    kept = split_sentences(text, collapse=False)
    assert kept == ["First  one,\twith spacing.", "Second one."]
    assert [text[start:end] for start, end in sentence_spans(text)] == kept
    assert split_sentences(" \n ", newlines=True) == [] and sentence_spans("") == []
