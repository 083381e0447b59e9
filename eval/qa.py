"""Answer quality of several pipeline configurations on one QA dataset, in one run.

For every example and configuration the answerer returns a :class:`verity.core.types.Answer`;
the harness scores it (gold answer contained, exact match, token F1),
records abstention, checks that every citation points at a source that was
given to the model, and keeps latency and tokens. Results are cached per
question and configuration (JSONL under the output folder), so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from eval.faithfulness import Judge, judge_outcome
from eval.html import write_html
from eval.metrics import (
    abstention_precision,
    abstention_recall,
    contains_answer,
    contains_answer_groups,
    context_precision,
    exact_match,
    token_f1,
)
from eval.outcomes import Outcome, outcome_from_json, per_question
from eval.qa_datasets import QADataset, QAExample
from eval.references import published_references
from eval.stats import mean_cis, paired_rows
from verity.core.types import Answer

Answerer = Callable[[str], Answer]


def score(example: QAExample, config: str, answer: Answer, latency_ms: float) -> Outcome:
    """Score one answer against the example's gold aliases.

    A source counts as relevant to the question when it is one of the example's
    known ``relevant_passages`` or, where none are known, when it contains a
    gold answer; unanswerable questions have no relevant source.
    """
    abstained = answer.status != "answered"
    text = "" if abstained else answer.text
    gold = list(example.answers) or [""]
    return Outcome(
        id=example.id, config=config, answer=answer.text, status=answer.status,
        unanswerable=example.unanswerable,
        contains=0.0 if abstained or not example.answers else _contains(text, example),
        em=exact_match(text, gold), f1=token_f1(text, gold), abstained=abstained,
        citations_valid=citations_valid(answer),
        n_citations=len(answer.citations), latency_ms=round(latency_ms, 1),
        prompt_tokens=answer.usage.get("prompt_tokens", 0),
        completion_tokens=answer.usage.get("completion_tokens", 0),
        action=str(answer.trace.get("action", "")),
        cited=tuple(c.document for c in answer.citations),
        question=example.question, gold=tuple(example.answers),
        sources=tuple({"n": s.n, "document": s.document, "chunk_id": s.chunk_id, "text": s.text}
                      for s in answer.sources),
        context_relevant=tuple(_relevant(s.document, s.text, example) for s in answer.sources),
        timings={k: round(float(v), 1) for k, v in answer.timings.items()},
        source_tokens=int(answer.trace.get("context", {}).get("source_tokens", 0)),
        abstain_reason=str(answer.trace.get("abstained", "")) if abstained else "",
        invalid_markers_removed=len(answer.invalid_citations),
    )


def _contains(text: str, example: QAExample) -> float:
    if example.answer_groups:
        return contains_answer_groups(text, example.answer_groups)
    return contains_answer(text, list(example.answers))


def _relevant(document: str, text: str, example: QAExample) -> bool:
    if example.unanswerable:
        return False
    if example.relevant_passages:
        return document in example.relevant_passages
    return bool(example.answers) and contains_answer(text, list(example.answers)) == 1.0


Progress = Callable[[str, int, int], None]


_MARKER = re.compile(r"\[(\d+)\]")


def citations_valid(answer: Answer) -> bool:
    """Whether every citation points at a source that was given to the model.

    Each citation must be source ``n`` itself (same number and chunk) and every
    ``[n]`` left in the text must name a given source. Markers the pipeline
    removed as invalid are counted separately (``invalid_markers_removed``).
    """
    by_n = {s.n: s.chunk_id for s in answer.sources}
    if any(by_n.get(c.n) != c.chunk_id for c in answer.citations):
        return False
    return all(int(m) in by_n for m in _MARKER.findall(answer.text))


def run(
    dataset: QADataset, answerers: Mapping[str, Answerer], *, cache_dir: Path,
    progress: Progress | None = None, judge: Judge | None = None,
    fingerprints: Mapping[str, str] | None = None,
) -> dict[str, list[Outcome]]:
    """Answer every example with every configuration, resuming from ``cache_dir``.

    Questions are the outer loop: each is answered by every configuration
    before the next, so a run stopped early still compares all of them on the
    same questions.

    Args:
        dataset: the questions.
        answerers: ``{config name: question -> Answer}``.
        cache_dir: one JSONL file per configuration; answers found there are not asked again.
        progress: called as ``progress(config, done, total)`` after each example.
        judge: judges faithfulness of each answer; an answer cached with another
            judge's verdict is judged again.
        fingerprints: ``{config: short hash of its settings}``, part of the cache
            file name, so a changed configuration never reuses old answers.

    Returns:
        ``{config: outcomes in the dataset's order}``.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprints = fingerprints or {}
    caches = {c: cache_dir / (f"{dataset.name}.{c}" + (f".{fingerprints[c]}" if c in fingerprints
                                                       else "") + ".jsonl") for c in answerers}
    done = {c: _read_cache(path) for c, path in caches.items()}
    for i, example in enumerate(dataset.examples, start=1):
        for config, answer_fn in answerers.items():
            outcome = done[config].get(example.id)
            fresh = outcome is None
            if outcome is None:
                started = time.perf_counter()
                answer = answer_fn(example.question)
                outcome = score(example, config, answer, (time.perf_counter() - started) * 1000)
            if judge is not None and outcome.judge != judge.name:
                outcome = judge_outcome(outcome, judge)
                fresh = True
            if fresh and outcome.status != "generation_unavailable":
                # An outage is not an answer: keep it out of the cache, so the
                # next run asks again instead of scoring the outage forever.
                with caches[config].open("a", encoding="utf-8") as out:
                    out.write(json.dumps(asdict(outcome), ensure_ascii=False) + "\n")
            done[config][example.id] = outcome
            if progress:
                progress(config, i, len(dataset.examples))
    return {c: [done[c][e.id] for e in dataset.examples] for c in answerers}


def _read_cache(path: Path) -> dict[str, Outcome]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out_ = outcome_from_json(json.loads(line))
            out[out_.id] = out_
    return out


def _share(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summarize(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """Aggregate metrics of one configuration.

    ``accuracy`` (gold contained), ``em`` and ``f1`` are over answerable
    questions; ``abstain_recall`` (also ``abstain_unanswerable``) and
    ``abstain_precision`` are :func:`eval.metrics.abstention_recall` and
    :func:`~eval.metrics.abstention_precision`; ``false_abstain`` the share of
    answerable questions abstained on; ``citation_validity`` the share of
    answers whose every citation names a source given to the model;
    ``context_precision`` (:func:`eval.metrics.context_precision`) is over
    answerable questions; ``faithfulness`` (:func:`eval.metrics.faithfulness`)
    is over answers the judge saw. Latency percentiles are numpy's (linear
    interpolation), for the whole answer and for every stage the pipeline timed.
    """
    answerable = [o for o in outcomes if not o.unanswerable]
    abstained = [o.abstained for o in outcomes]
    unanswerable = [o.unanswerable for o in outcomes]
    judged = [o.faithfulness for o in outcomes if o.faithfulness is not None]
    latencies = [o.latency_ms for o in outcomes]
    summary = {
        "n": float(len(outcomes)),
        "accuracy": _share([o.contains for o in answerable]),
        "em": _share([o.em for o in answerable]),
        "f1": _share([o.f1 for o in answerable]),
        "false_abstain": _share([float(o.abstained) for o in answerable]),
        "abstain_unanswerable": abstention_recall(abstained, unanswerable),
        "abstain_recall": abstention_recall(abstained, unanswerable),
        "abstain_precision": abstention_precision(abstained, unanswerable),
        "citation_validity": _share([float(o.citations_valid) for o in outcomes]),
        "answers_with_invalid_markers_removed": _share(
            [float(o.invalid_markers_removed > 0) for o in outcomes]),
        "context_precision": _share([context_precision(o.context_relevant) for o in answerable]),
        "faithfulness": _share(judged),
        "judged": float(len(judged)),
        "latency_p50_ms": _pct(latencies, 50),
        "latency_p95_ms": _pct(latencies, 95),
        "tokens_per_answer": _share([o.prompt_tokens + o.completion_tokens for o in outcomes]),
        "prompt_tokens_per_answer": _share([o.prompt_tokens for o in outcomes]),
        "completion_tokens_per_answer": _share([o.completion_tokens for o in outcomes]),
    }
    for stage in sorted({k for o in outcomes for k in o.timings}):
        values = [o.timings[stage] for o in outcomes if stage in o.timings]
        name = stage.removesuffix("_ms")
        summary[f"{name}_p50_ms"] = _pct(values, 50)
        summary[f"{name}_p95_ms"] = _pct(values, 95)
    return summary


def compare(results: Mapping[str, Sequence[Outcome]], *, baseline: str) -> list[dict[str, Any]]:
    """Paired bootstrap of each configuration against ``baseline``, per metric.

    Rows keep the historical keys (``diff``, ``low``, ``high``) beside the
    names retrieval reports use (``mean_diff``, ``ci95_low``, ``ci95_high``).
    """
    if baseline not in results:
        return []
    base = per_question(results[baseline])
    rows = []
    for config, outcomes in results.items():
        if config == baseline:
            continue
        for row in paired_rows(per_question(outcomes), base):
            rows.append({"config": config, "baseline": baseline, **row,
                         "diff": row["mean_diff"], "low": row["ci95_low"],
                         "high": row["ci95_high"]})
    return rows


MARKDOWN_COLUMNS = ("accuracy", "em", "f1", "false_abstain", "abstain_precision", "abstain_recall",
                    "citation_validity", "context_precision", "faithfulness", "latency_p50_ms",
                    "latency_p95_ms", "tokens_per_answer")


def report_data(dataset: QADataset, results: Mapping[str, Sequence[Outcome]],
                provenance: Mapping[str, Any], *, configs: Mapping[str, Any] | None = None,
                judge: str | None = None) -> dict[str, Any]:
    """Everything in the QA report as JSON-ready data, every outcome included."""
    baseline = next(iter(results))
    return {
        "kind": "qa",
        "dataset": dataset.name,
        "provenance": dict(provenance),
        "configs": dict(configs or {c: {} for c in results}),
        "judge": judge,
        "summary": {c: summarize(o) for c, o in results.items()},
        "ci95": {c: mean_cis(per_question(o)) for c, o in results.items()},
        "comparisons": compare(results, baseline=baseline),
        "published_references": published_references(dataset.name),
        "outcomes": {c: [asdict(x) for x in o] for c, o in results.items()},
    }


def render_markdown(report: Mapping[str, Any]) -> str:
    """The QA report as Markdown, from :func:`report_data`'s output."""
    lines = [f"# QA evaluation: {report['dataset']}", ""]
    lines += [f"- {k}: {_md_value(v)}" for k, v in report["provenance"].items()]
    lines.append(f"- faithfulness judge: {report.get('judge') or 'not judged'}")
    cols = list(MARKDOWN_COLUMNS)
    lines += ["", "| config | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for config, s in report["summary"].items():
        lines.append(f"| {config} | {int(s['n'])} | " + " | ".join(_fmt(s.get(c, float("nan")))
                                                                 for c in cols) + " |")
    for ref in report.get("published_references", []):
        cells = [f"*{ref['value']:.3f}*" if c == ref["metric"] else "–" for c in cols]
        lines.append(f"| *{ref['system']}, published* | – | " + " | ".join(cells) + " |")
    stages = sorted({k for s in report["summary"].values() for k in s
                     if k.endswith("_p50_ms") and k != "latency_p50_ms"})
    if stages:
        lines += ["", "Latency per stage, p50 / p95 ms:", ""]
        for config, s in report["summary"].items():
            lines.append(f"- {config}: " + ", ".join(
                f"{st.removesuffix('_p50_ms')} {s[st]:.0f} / {s[st.replace('_p50_', '_p95_')]:.0f}"
                for st in stages if st in s))
    rows = report.get("comparisons", [])
    if rows:
        lines += ["", "Differences (paired bootstrap over questions, 95% interval; * = significant):",
                  ""]
        lines += [f"- {r['config']} vs {r['baseline']}, {r['metric']}: {r['mean_diff']:+.3f} "
                  f"[{r['ci95_low']:+.3f}, {r['ci95_high']:+.3f}], p = {r['p_value']:.3f}"
                  f"{' *' if r['significant'] else ''}" for r in rows]
    refs = report.get("published_references", [])
    if refs:
        lines += ["", "## Published reference (from the literature, not measured here)", ""]
        lines += [f"- {r['system']}: {r['metric']} = {r['value']:.3f} (published, {r['source']}; "
                  "not measured by this run)" for r in refs]
    return "\n".join(lines) + "\n"


def _finite(value: Any) -> Any:
    """NaN (a metric with nothing to average) as null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _md_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _fmt(value: float) -> str:
    return "-" if value != value else (f"{value:.0f}" if value > 10 else f"{value:.3f}")


def write_reports(dataset: QADataset, results: Mapping[str, Sequence[Outcome]],
                  provenance: Mapping[str, Any], out_dir: Path, *,
                  configs: Mapping[str, Any] | None = None, judge: str | None = None,
                  baseline: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """``qa-<dataset>.md``, ``.json`` (summaries, comparisons, every outcome) and ``.html``.

    Args:
        baseline: a comparison against an earlier run (``{"baseline": path, "rows": [...]}``),
            stored in the JSON and shown in the HTML page.

    Returns:
        The Markdown and JSON paths (the HTML page lies beside them).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"qa-{dataset.name}.md", out_dir / f"qa-{dataset.name}.json"
    report = report_data(dataset, results, provenance, configs=configs, judge=judge)
    if baseline:
        report["baseline_comparison"] = dict(baseline)
    md.write_text(render_markdown(report), encoding="utf-8")
    js.write_text(json.dumps(_finite(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_html(report, out_dir / f"qa-{dataset.name}.html")
    return md, js
