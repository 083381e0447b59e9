"""Private-data protection: personal data is replaced by placeholders before text goes to
the model, and the placeholders in the answer are restored afterwards.

Detected: e-mail addresses, phone numbers, payment card numbers (checked with
the Luhn algorithm), IBANs and other account numbers (runs of 8 to 17 digits).
The model only ever sees ``<EMAIL_1>``, ``<PHONE_2>`` and so on; the same value
always gets the same placeholder within one answer, so the model can still
refer to it. Regular expressions, not a model: predictable, fast, and nothing
leaves the process to find the data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import partial

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")),
    ("CARD", re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")),
    ("PHONE", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?"
                         r"\d{2,4}(?:[ .-]\d{2,4}){2,4}(?!\w)")),
    ("ACCOUNT", re.compile(r"(?<!\d)\d{8,17}(?!\d)")),
]
_PLACEHOLDER = re.compile(r"<(EMAIL|IBAN|CARD|PHONE|ACCOUNT)_(\d+)>")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that payment card numbers carry."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class PiiVault:
    """Masks text for the model and restores the model's answer.

    Example:
        >>> vault = PiiVault()
        >>> vault.mask("Mail ana@example.com")
        'Mail <EMAIL_1>'
        >>> vault.unmask("Write to <EMAIL_1>.")
        'Write to ana@example.com.'
    """

    def __init__(self) -> None:
        self._by_value: dict[str, str] = {}
        self._by_token: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def mask(self, text: str) -> str:
        for kind, pattern in _PATTERNS:
            text = pattern.sub(partial(self._token, kind), text)
        return text

    def unmask(self, text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self._by_token.get(m.group(0), m.group(0)), text)

    def unmask_stream(self, deltas: Iterable[str]) -> Iterator[str]:
        """Restore placeholders in streamed text, holding back a placeholder cut in two."""
        pending = ""
        for delta in deltas:
            pending += delta
            cut = pending.rfind("<")
            if cut != -1 and ">" not in pending[cut:] and len(pending) - cut < 16:
                ready, pending = pending[:cut], pending[cut:]
            else:
                ready, pending = pending, ""
            if ready:
                yield self.unmask(ready)
        if pending:
            yield self.unmask(pending)

    @property
    def masked(self) -> int:
        """How many distinct values were masked."""
        return len(self._by_value)

    def _token(self, kind: str, match: re.Match[str]) -> str:
        value = match.group(0)
        if _PLACEHOLDER.fullmatch(value):
            return value
        digits = re.sub(r"\D", "", value)
        if kind == "CARD" and not (13 <= len(digits) <= 19 and luhn_valid(digits)):
            return value  # not a card: leave it for the phone and account patterns
        if kind == "PHONE" and len(digits) < 9:
            return value
        if value not in self._by_value:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            token = f"<{kind}_{self._counts[kind]}>"
            self._by_value[value] = token
            self._by_token[token] = value
        return self._by_value[value]
