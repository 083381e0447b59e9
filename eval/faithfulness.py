"""Faithfulness: is each sentence of an answer supported by the text it cites?

An answer is split into sentences; each sentence is judged against the text of
the sources it cites with ``[n]`` (all sources given to the model when it cites
none) by a judge model through the ``faithfulness_judge`` prompt, and the
answer's score is the share of supported sentences
(:func:`eval.metrics.faithfulness`). The judge is the local model or any
OpenAI-compatible chat server; reports carry its name, since a score means
little without knowing who gave it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from eval.metrics import faithfulness
from eval.outcomes import Outcome
from verity.core.errors import GenerationError
from verity.core.prompts import PromptLibrary
from verity.core.protocols import Generator
from verity.core.sentences import split_sentences

_CITATION = re.compile(r"\[(\d+)\]")
MAX_SOURCE_CHARS = 6000
"""Cited text beyond this is cut, so one judgment fits a small model's context."""


class Judge(Protocol):
    """Decides whether a statement is supported by a source text."""

    name: str

    def supported(self, statement: str, source: str) -> bool: ...


class LlmJudge:
    """A :class:`Judge` asking a chat model "Does the source support the statement?".

    Example:
        >>> judge = LlmJudge(runtime.generator, PromptLibrary.load(), name="qwen (local)")
        >>> judge.supported("Paris is in France.", "Paris is the capital of France.")
        True
    """

    def __init__(self, generator: Generator, prompts: PromptLibrary, *, name: str | None = None) -> None:
        self._generator = generator
        self._prompts = prompts
        self.name = name or generator.model

    def supported(self, statement: str, source: str) -> bool:
        """True when the model's reply starts with "yes".

        Raises:
            GenerationError: the judge's server failed.
        """
        prompt = self._prompts.render("faithfulness_judge", source=source[:MAX_SOURCE_CHARS],
                                      statement=statement)
        reply = self._generator.generate([{"role": "user", "content": prompt}], max_tokens=3)
        return reply.text.strip().lower().lstrip("*\"' ").startswith("yes")


def sentences(text: str) -> list[str]:
    """The answer's sentences, split as the citation check splits them (CJK stops included)."""
    return split_sentences(text, collapse=False)


def statements(answer: str, sources: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(sentence without its markers, text it cites)`` for each sentence worth judging.

    A sentence that is only citation markers or punctuation is skipped.
    """
    by_n = {int(s["n"]): str(s["text"]) for s in sources}
    out = []
    for sentence in sentences(answer):
        plain = _CITATION.sub("", sentence).strip()
        if not re.search(r"\w", plain):
            continue
        cited = [by_n[n] for n in map(int, _CITATION.findall(sentence)) if n in by_n]
        context = "\n\n".join(dict.fromkeys(cited or list(by_n.values())))
        out.append((plain, context))
    return out


def judge_outcome(outcome: Outcome, judge: Judge) -> Outcome:
    """The outcome with its sentences judged (answers only: abstentions are not judged).

    A judge failure leaves the outcome unjudged (``faithfulness`` None) rather
    than failing the run; the next run tries again.
    """
    if outcome.status != "answered" or not outcome.sources:
        return replace(outcome, faithfulness=None, supported=(), judge=judge.name)
    pairs = statements(outcome.answer, outcome.sources)
    try:
        verdicts = tuple(judge.supported(s, ctx) for s, ctx in pairs)
    except GenerationError:
        return outcome
    return replace(outcome, supported=verdicts, faithfulness=faithfulness(verdicts) if verdicts
                   else None, judge=judge.name)
