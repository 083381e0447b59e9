"""Answer quality of several pipeline configurations on one QA dataset, in one run.

For every example and configuration the answerer returns a :class:`core.types.Answer`;
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.types import Answer
from eval.metrics import contains_answer, exact_match, paired_bootstrap, token_f1
from eval.qa_datasets import QADataset, QAExample

Answerer = Callable[[str], Answer]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One example answered by one configuration, scored."""

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
    source_tokens: int = 0  # tokens of the sources packed into the prompt
    abstain_reason: str = ""
    invalid_markers_removed: int = 0


def score(example: QAExample, config: str, answer: Answer, latency_ms: float) -> Outcome:
    """Score one answer against the example's gold aliases."""
    abstained = answer.status != "answered"
    text = "" if abstained else answer.text
    gold = list(example.answers) or [""]
    return Outcome(
        id=example.id, config=config, answer=answer.text, status=answer.status,
        unanswerable=example.unanswerable,
        contains=0.0 if abstained or not example.answers else contains_answer(text, gold),
        em=exact_match(text, gold), f1=token_f1(text, gold), abstained=abstained,
        citations_valid=citations_valid(answer),
        n_citations=len(answer.citations), latency_ms=round(latency_ms, 1),
        prompt_tokens=answer.usage.get("prompt_tokens", 0),
        completion_tokens=answer.usage.get("completion_tokens", 0),
        action=str(answer.trace.get("action", "")),
        cited=tuple(c.document for c in answer.citations),
        source_tokens=int(answer.trace.get("context", {}).get("source_tokens", 0)),
        abstain_reason=str(answer.trace.get("abstained", "")) if abstained else "",
        invalid_markers_removed=len(answer.invalid_citations),
    )


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
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, list[Outcome]]:
    """Answer every example with every configuration, resuming from ``cache_dir``.

    Questions are the outer loop: each is answered by every configuration
    before the next, so a run stopped early still compares all of them on the
    same questions.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    caches = {c: cache_dir / f"{dataset.name}.{c}.jsonl" for c in answerers}
    done = {c: _read_cache(path) for c, path in caches.items()}
    for i, example in enumerate(dataset.examples, start=1):
        for config, answer_fn in answerers.items():
            if example.id not in done[config]:
                started = time.perf_counter()
                answer = answer_fn(example.question)
                outcome = score(example, config, answer, (time.perf_counter() - started) * 1000)
                if answer.status != "generation_unavailable":
                    # An outage is not an answer: keep it out of the cache, so the
                    # next run asks again instead of scoring the outage forever.
                    with caches[config].open("a", encoding="utf-8") as out:
                        out.write(json.dumps(asdict(outcome)) + "\n")
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
            data = json.loads(line)
            data["cited"] = tuple(data.get("cited", ()))
            out[data["id"]] = Outcome(**data)
    return out


def summarize(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """Aggregate metrics of one configuration.

    ``accuracy`` (gold contained), ``em`` and ``f1`` are over answerable
    questions; ``abstain_unanswerable`` is the share of unanswerable
    questions abstained on (abstention recall); ``false_abstain`` the share
    of answerable ones abstained on; ``abstain_precision`` the share of
    abstentions that were on unanswerable questions; ``citation_validity``
    the share of answers whose every citation names a source given to the model.
    """
    answerable = [o for o in outcomes if not o.unanswerable]
    unanswerable = [o for o in outcomes if o.unanswerable]
    abstentions = [o for o in outcomes if o.abstained]
    latencies = sorted(o.latency_ms for o in outcomes)

    def share(items: Sequence[Outcome], key: Callable[[Outcome], float]) -> float:
        return sum(key(o) for o in items) / len(items) if items else float("nan")

    return {
        "n": float(len(outcomes)),
        "accuracy": share(answerable, lambda o: o.contains),
        "em": share(answerable, lambda o: o.em),
        "f1": share(answerable, lambda o: o.f1),
        "false_abstain": share(answerable, lambda o: float(o.abstained)),
        "abstain_unanswerable": share(unanswerable, lambda o: float(o.abstained)),
        "abstain_precision": share(abstentions, lambda o: float(o.unanswerable)),
        "citation_validity": share(outcomes, lambda o: float(o.citations_valid)),
        "answers_with_invalid_markers_removed": share(
            outcomes, lambda o: float(o.invalid_markers_removed > 0)),
        "latency_p50_ms": latencies[len(latencies) // 2] if latencies else float("nan"),
        "latency_p95_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
        if latencies else float("nan"),
        "tokens_per_answer": share(outcomes, lambda o: o.prompt_tokens + o.completion_tokens),
    }


def compare(results: Mapping[str, Sequence[Outcome]], *, baseline: str) -> list[dict[str, Any]]:
    """Paired bootstrap of each configuration's accuracy against ``baseline``'s."""
    if baseline not in results:
        return []
    base = [o.contains for o in results[baseline] if not o.unanswerable]
    rows = []
    for config, outcomes in results.items():
        if config == baseline:
            continue
        other = [o.contains for o in outcomes if not o.unanswerable]
        if not other:
            continue
        r = paired_bootstrap(other, base)
        rows.append({"config": config, "baseline": baseline, "metric": "accuracy",
                     "diff": r.mean_diff, "low": r.low, "high": r.high, "p_value": r.p_value})
    return rows


def render_markdown(dataset: QADataset, results: Mapping[str, Sequence[Outcome]],
                    provenance: Mapping[str, Any]) -> str:
    cols = ["accuracy", "em", "f1", "false_abstain", "abstain_unanswerable", "abstain_precision",
            "citation_validity", "latency_p50_ms", "latency_p95_ms", "tokens_per_answer"]
    lines = [f"# QA evaluation: {dataset.name}", ""]
    lines += [f"- {k}: {v}" for k, v in provenance.items()]
    lines += ["", "| config | n | " + " | ".join(cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for config, outcomes in results.items():
        s = summarize(outcomes)
        lines.append(f"| {config} | {int(s['n'])} | " + " | ".join(_fmt(s[c]) for c in cols) + " |")
    rows = compare(results, baseline=next(iter(results)))
    if rows:
        lines += ["", "Differences in accuracy (paired bootstrap, 95% interval):", ""]
        lines += [f"- {r['config']} vs {r['baseline']}: {r['diff']:+.3f} "
                  f"[{r['low']:+.3f}, {r['high']:+.3f}], p = {r['p_value']:.3f}" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return "-" if value != value else (f"{value:.0f}" if value > 10 else f"{value:.3f}")


def write_reports(dataset: QADataset, results: Mapping[str, Sequence[Outcome]],
                  provenance: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``qa.md`` and ``qa.json`` (summaries, comparisons and every outcome)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"qa-{dataset.name}.md", out_dir / f"qa-{dataset.name}.json"
    md.write_text(render_markdown(dataset, results, provenance), encoding="utf-8")
    js.write_text(json.dumps({
        "provenance": dict(provenance),
        "summary": {c: summarize(o) for c, o in results.items()},
        "comparisons": compare(results, baseline=next(iter(results))),
        "outcomes": {c: [asdict(x) for x in o] for c, o in results.items()},
    }, indent=2) + "\n", encoding="utf-8")
    return md, js
