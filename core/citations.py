"""Citation markers: find ``[n]`` in an answer, keep the valid ones, drop the rest."""

from __future__ import annotations

import re
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
