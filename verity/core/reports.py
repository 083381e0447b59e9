"""Saved evaluation reports, as the service browses them.

``eval`` writes and compares reports; the service only serves them. The
service never imports ``eval``: whoever builds the app (``verity serve``, a
test) passes an object that satisfies :class:`ReportArchive`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Protocol

from verity.core.errors import ConfigError

ReportKind = Literal["retrieval", "qa"]

# A report's name is its JSON's path under the reports folder without ``.json``: one to four
# segments of letters, digits, '.', '_' and '-', none starting with a dot.
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
REPORT_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,3}}")


def validate_report_name(name: str) -> str:
    """``name`` if it can name a report; never a path out of the reports folder.

    Raises:
        ConfigError: absolute, ``..``, hidden segments, or characters outside
            letters, digits, ``.``, ``_``, ``-`` and ``/`` (400).
    """
    if not REPORT_NAME.fullmatch(name):
        raise ConfigError(f"invalid report name {name[:80]!r}: use a name from GET /v1/eval/reports "
                          "(segments of letters, digits, '.', '_' or '-', joined by '/')")
    return name


@dataclass(frozen=True, slots=True)
class ReportInfo:
    """One saved report: what a list of reports shows about it.

    ``metrics`` holds each configuration's headline numbers (``{config: {metric: value}}``).
    """

    name: str
    kind: ReportKind
    dataset: str
    created_utc: str | None
    git_commit: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


class ReportArchive(Protocol):
    """A folder of saved reports (``verity eval ... --out``), read-only.

    Names are those :meth:`list_reports` returns. Every method raises
    ``ConfigError`` for a name :func:`validate_report_name` refuses and
    ``NotFoundError`` for a valid name that is no report.
    """

    def list_reports(self) -> list[ReportInfo]:
        """Every readable report, newest first (unreadable files are left out)."""
        ...

    def report_html(self, name: str) -> str:
        """The report's self-contained HTML page.

        Raises:
            ConfigError: invalid name (400).
            NotFoundError: no such report (404).
        """
        ...

    def compare_html(self, a: str, b: str) -> str:
        """An HTML page of what changed from report ``a`` to report ``b``, differences first.

        Raises:
            ConfigError: invalid name, or the two cannot be compared (different kinds,
                nothing in common) (400).
            NotFoundError: no such report (404).
        """
        ...
