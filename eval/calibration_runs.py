"""Orchestrating a calibration of corrective RAG on labelled questions: score every question
(retrieval and the evaluator only, nothing generated), fit (:mod:`eval.calibrate`) and say
what to set.

Example:
    >>> with open_runtime(settings, generator=False) as runtime:
    ...     ingest_passages("qa-popqa", settings.chunking)
    ...     for line in calibrate_evaluator(runtime, data, "qa-popqa", target=0.8):
    ...         print(line)
"""

from __future__ import annotations

from eval.calibrate import AbstentionThreshold, Thresholds, fit_abstention, fit_thresholds
from eval.datasets import DatasetError
from eval.metrics import contains_answer
from eval.qa_datasets import QADataset
from verity.answering.crag import CorrectiveRag
from verity.answering.runtime import Runtime


def evaluator_scores(runtime: Runtime, data: QADataset,
                     collection: str) -> tuple[list[float], list[bool]]:
    """For each answerable question: the evaluator's best score over what was retrieved, and
    whether a retrieved chunk holds a gold answer."""
    scores, labels = [], []
    crag = CorrectiveRag(runtime.rag(), runtime.settings.crag)
    for example in (e for e in data.examples if e.answers):
        hits = crag.rag.retrieve(example.question, collection=collection)
        _, _, best = crag.evaluate(example.question, hits)
        scores.append(best)
        labels.append(any(contains_answer(h.chunk.text, list(example.answers)) for h in hits))
    return scores, labels


def abstention_scores(runtime: Runtime, data: QADataset,
                      collection: str) -> tuple[list[float], list[bool]]:
    """For each question: the answerability check's best strip score (with the check itself and
    the query rewrite off), and whether the question is unanswerable.

    Raises:
        DatasetError: no question is marked unanswerable.
    """
    if not any(e.unanswerable for e in data.examples):
        raise DatasetError(f"{data.name} marks no question unanswerable; --abstention needs some")
    crag = CorrectiveRag(runtime.rag(), runtime.settings.crag.model_copy(
        update={"answerable_min": None, "rewrite": False}))
    scores, labels = [], []
    for example in data.examples:
        prepared = crag.prepare(example.question, collection=collection)
        scores.append(float(prepared.trace.get("best_strip", 0.0)))
        labels.append(example.unanswerable)
    return scores, labels


def calibrate_evaluator(runtime: Runtime, data: QADataset, collection: str, *,
                        target: float) -> list[str]:
    """Fit the evaluator's thresholds; returns the lines to print (settings last)."""
    scores, labels = evaluator_scores(runtime, data, collection)
    return thresholds_lines(fit_thresholds(scores, labels, target=target), sum(labels))


def calibrate_abstention(runtime: Runtime, data: QADataset, collection: str, *,
                         max_false_abstain: float) -> list[str]:
    """Fit the answerability check; returns the lines to print (the setting last)."""
    scores, labels = abstention_scores(runtime, data, collection)
    return abstention_lines(fit_abstention(scores, labels, max_false_abstain=max_false_abstain))


def thresholds_lines(t: Thresholds, answer_retrieved: int) -> list[str]:
    """What the evaluator's fit found, and the settings to use it."""
    return [
        f"{t.n} questions, {answer_retrieved} with the answer in the retrieved chunks",
        f"correct   >= {t.upper}: precision {t.precision_correct}, {t.share_correct:.0%} "
        "of questions",
        f"incorrect <  {t.lower}: precision {t.precision_incorrect}, "
        f"{t.share_incorrect:.0%} of questions",
        f"VERITY_CRAG__UPPER={t.upper}\nVERITY_CRAG__LOWER={t.lower}",
    ]


def abstention_lines(t: AbstentionThreshold) -> list[str]:
    """What the answerability check's fit found, and the setting to use it."""
    return [
        f"{t.n_answerable} answerable and {t.n_unanswerable} unanswerable questions",
        f"abstain when the best strip < {t.threshold}: {t.false_abstain:.1%} of answerable, "
        f"{t.abstain_unanswerable:.1%} of unanswerable questions",
        f"VERITY_CRAG__ANSWERABLE_MIN={t.threshold}",
    ]
