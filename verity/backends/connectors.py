"""External knowledge connectors for corrective RAG's "incorrect" action.

A connector is any object with a ``name`` and a ``search`` method returning
passages. None is enabled by default and none reaches the internet in tests.
``ReplayConnector`` serves recorded search results: the CRAG paper's own
web-search knowledge for PopQA, one line per question, so the corrective
path can be evaluated as the paper did, with no network.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from verity.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Passage:
    title: str
    text: str
    url: str = ""


class Connector(Protocol):
    name: str

    def search(self, question: str, *, query: str, k: int) -> list[Passage]:
        """Up to ``k`` passages for the original ``question`` (or its rewritten ``query``)."""
        ...


class ReplayConnector:
    """Recorded results keyed by question text.

    Args:
        questions: JSONL with a ``question`` per line (line i = question i).
        knowledge: text file whose line i holds question i's results, separated by `` ; ``,
            each optionally prefixed ``#Title:``.

    Example:
        >>> ReplayConnector(Path("popqa_longtail.jsonl"), Path("ref_incorrect.txt"))
    """

    name = "replay"

    def __init__(self, questions: Path, knowledge: Path) -> None:
        try:
            asked = [json.loads(line)["question"] for line in
                     questions.read_text(encoding="utf-8").splitlines() if line.strip()]
            lines = knowledge.read_text(encoding="utf-8").split("\n")
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"replay connector: cannot read {questions} / {knowledge}: {e}") from e
        self._by_question = {q.strip(): line for q, line in zip(asked, lines, strict=False)}

    def search(self, question: str, *, query: str, k: int) -> list[Passage]:
        line = self._by_question.get(question.strip(), "")
        return [p for p in (_passage(part) for part in line.split(" ; ")) if p.text][:k]


def _passage(raw: str) -> Passage:
    raw = raw.strip().lstrip("#").strip()
    title, sep, text = raw.partition(":")
    if sep and len(title) < 120:
        return Passage(title=title.strip(), text=text.strip())
    return Passage(title="", text=raw)


def build_connectors(specs: Sequence[str]) -> list[Connector]:
    """Connectors from settings strings: ``replay:QUESTIONS_JSONL:KNOWLEDGE_TXT``.

    Raises:
        ConfigError: an unknown kind or a malformed spec.
    """
    out: list[Connector] = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        match kind:
            case "replay":
                questions, sep, knowledge = rest.partition(":")
                if not sep:
                    raise ConfigError("replay connector spec is replay:QUESTIONS.jsonl:KNOWLEDGE.txt")
                out.append(ReplayConnector(Path(questions), Path(knowledge)))
            case _:
                raise ConfigError(f"unknown connector {kind!r}; available: replay")
    return out
