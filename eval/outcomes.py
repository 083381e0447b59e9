"""One QA example answered by one configuration, scored: the record every QA report,
cache and comparison is made of, and the per-question values comparisons resample."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from eval.metrics import context_precision


@dataclass(frozen=True, slots=True)
class Outcome:
    """One example answered by one configuration, scored.

    ``sources`` are the passages given to the model (``n``, ``document``,
    ``text``), in order; ``context_relevant`` flags each as relevant to the
    question (see :func:`eval.qa.score`); ``supported`` holds the judge's verdict on
    each answer sentence and ``faithfulness`` their share (None when not judged).
    """

    id: str
    config: str
    answer: str
    status: str
    unanswerable: bool
    contains: float
    em: float
    f1: float
    abstained: bool
    citations_valid: bool
    n_citations: int
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    action: str = ""
    cited: tuple[str, ...] = ()
    question: str = ""
    gold: tuple[str, ...] = ()
    sources: tuple[dict[str, Any], ...] = ()
    context_relevant: tuple[bool, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    faithfulness: float | None = None
    supported: tuple[bool, ...] = ()
    judge: str = ""
    source_tokens: int = 0  # tokens of the sources packed into the prompt
    abstain_reason: str = ""
    invalid_markers_removed: int = 0


_TUPLE_FIELDS = ("cited", "gold", "sources", "context_relevant", "supported")


def outcome_from_json(data: Mapping[str, Any]) -> Outcome:
    """An :class:`Outcome` from its JSON form (a cache line or a report's ``outcomes``)."""
    known = {f.name for f in fields(Outcome)}
    values = {k: v for k, v in data.items() if k in known}
    for name in _TUPLE_FIELDS:
        if name in values:
            values[name] = tuple(values[name])
    return Outcome(**values)


PER_QUESTION_METRICS = ("accuracy", "em", "f1", "abstained", "context_precision", "faithfulness",
                        "latency_ms")


def per_question(outcomes: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """``{metric: {question id: value}}``, the values paired comparisons resample.

    Answer metrics and context precision cover answerable questions,
    faithfulness the judged answers, ``abstained`` (0/1) and latency all.
    """
    table: dict[str, dict[str, float]] = {m: {} for m in PER_QUESTION_METRICS}
    for o in outcomes:
        if not o.unanswerable:
            table["accuracy"][o.id] = o.contains
            table["em"][o.id] = o.em
            table["f1"][o.id] = o.f1
            table["context_precision"][o.id] = context_precision(o.context_relevant)
        if o.faithfulness is not None:
            table["faithfulness"][o.id] = o.faithfulness
        table["abstained"][o.id] = float(o.abstained)
        table["latency_ms"][o.id] = o.latency_ms
    return {m: v for m, v in table.items() if v}
