"""Markdown and JSON reports of a retrieval evaluation, with their provenance.

Every report says which data (sha256), code (git commit) and model produced
its numbers. Published figures from papers appear in their own, labelled
section and are never mixed with measured ones.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eval.datasets import BeirDataset
from eval.html import write_html
from eval.metrics import evaluate, mean, paired_bootstrap
from eval.references import PUBLISHED, published_references
from eval.retrieval import ModeResult, RetrievalResult, percentile
from eval.stats import mean_cis

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a report's numbers came from."""

    dataset: str
    dataset_path: str
    split: str
    dataset_sha256: str
    corpus_documents: int
    git_commit: str | None
    created_utc: str
    command: str | None = None
    machine: str = ""
    models: dict[str, str] = field(default_factory=dict)
    configuration: dict[str, Any] = field(default_factory=dict)
    prompt_hashes: dict[str, str] = field(default_factory=dict)


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of ``repo``, with ``-dirty`` if tracked files changed; None without git."""
    try:
        head = _git(repo, "rev-parse", "HEAD")
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10,
                          check=True)
    return done.stdout.strip()


def provenance(dataset: BeirDataset, *, command: str | None = None,
               models: dict[str, str] | None = None,
               configuration: dict[str, Any] | None = None) -> Provenance:
    """The provenance of an evaluation of ``dataset`` run now from this checkout."""
    return Provenance(
        dataset=dataset.name, dataset_path=str(dataset.path), split=dataset.split,
        dataset_sha256=dataset.sha256, corpus_documents=dataset.corpus_size,
        git_commit=git_commit(), created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        command=command, machine=machine(), models=dict(models or {}),
        configuration=dict(configuration or {}), prompt_hashes=prompt_hashes(),
    )


def prompt_hashes() -> dict[str, str]:
    """``{prompt name: sha256}`` of the prompt templates in this checkout."""
    from verity.core.prompts import PromptLibrary

    return PromptLibrary.load().hashes()


def machine() -> str:
    """CPU count and 1-minute load average now: context for the latencies in a report."""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()}, {os.cpu_count()} CPUs{load}"


def compare_modes(result: RetrievalResult, *, n_resamples: int = 10000) -> list[dict[str, Any]]:
    """Paired bootstrap of every later mode against the first, per metric."""
    if len(result.modes) < 2:
        return []
    base = result.modes[0]
    rows = []
    for other in result.modes[1:]:
        for metric, values in other.per_query.items():
            qids = sorted(values)
            diff, low, high, p = paired_bootstrap([values[q] for q in qids],
                                                  [base.per_query[metric][q] for q in qids],
                                                  n_resamples=n_resamples)
            rows.append({"mode": other.mode, "baseline": base.mode, "metric": metric,
                         "mean_diff": diff, "ci95_low": low, "ci95_high": high, "p_value": p})
    return rows


def report_data(result: RetrievalResult, info: Provenance,
                dataset: BeirDataset | None = None) -> dict[str, Any]:
    """Everything in the report as JSON-ready data, per-query values included.

    With the ``dataset``, each mode also gets MAP and a recall@k curve computed
    from its rankings, and the report a per-query drill-down (query text,
    judged documents, each mode's top hits).
    """
    modes = [_mode_data(m) for m in result.modes]
    if dataset is not None:
        for mode, data in zip(result.modes, modes, strict=True):
            _add_ranking_metrics(mode, data, dataset)
    return {
        "kind": "retrieval",
        "provenance": asdict(info),
        "setup": _setup(result),
        "query_embedding_ms": {"p50": _p(result.embed_ms, 50), "p95": _p(result.embed_ms, 95)},
        "modes": modes,
        "comparisons": compare_modes(result),
        "published_references": published_references(info.dataset),
        "drilldown": drilldown(result, dataset) if dataset is not None else [],
    }


RECALL_CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100)
DRILLDOWN_HITS = 10


def _add_ranking_metrics(mode: ModeResult, data: dict[str, Any], dataset: BeirDataset) -> None:
    if mode.rankings:
        run = {q: {doc: -i for i, doc in enumerate(docs)} for q, docs in mode.rankings.items()}
        if "map" not in mode.per_query:
            per_map = evaluate(run, dataset.qrels, ["map"])["map"]
            data["per_query"] = {**data["per_query"], "map": per_map}
            data["metrics"] = {**data["metrics"], "map": mean(per_map)}
        curve = evaluate(run, dataset.qrels, [f"recall@{k}" for k in RECALL_CURVE_KS])
        data["recall_curve"] = {str(k): mean(curve[f"recall@{k}"]) for k in RECALL_CURVE_KS}
    data["ci95"] = mean_cis(data["per_query"])


def drilldown(result: RetrievalResult, dataset: BeirDataset) -> list[dict[str, Any]]:
    """Per query: its text, judged documents and each mode's top hits (relevant ones marked)."""
    rows = []
    for qid, judged in dataset.qrels.items():
        relevant = sorted((d for d, g in judged.items() if g >= 1), key=lambda d: -judged[d])
        hits = {m.mode: [{"doc": d, "grade": judged.get(d, 0)}
                         for d in m.rankings.get(qid, [])[:DRILLDOWN_HITS]] for m in result.modes}
        scores = {m.mode: {k: v[qid] for k, v in m.per_query.items() if qid in v}
                  for m in result.modes}
        rows.append({"id": qid, "query": dataset.queries.get(qid, ""), "relevant": relevant,
                     "grades": {d: judged[d] for d in relevant}, "hits": hits, "scores": scores})
    return rows


def _setup(result: RetrievalResult) -> dict[str, Any]:
    return {"collection": result.collection, "model": result.model, "queries": result.queries,
            "modes": [m.mode for m in result.modes], "depth_chunks": result.depth,
            "oversample": result.oversample,
            "binary_candidates": result.depth * result.oversample, **result.settings}


def _mode_data(mode: ModeResult) -> dict[str, Any]:
    return {"mode": mode.mode, "metrics": mode.metrics,
            "search_ms": {"p50": mode.p50_ms, "p95": mode.p95_ms},
            "documents_per_query": mode.docs_per_query, "index_bytes": mode.index_bytes,
            "per_query": mode.per_query,
            "per_query_search_ms": mode.search_ms}


def _p(values: dict[str, float], q: float) -> float:
    return percentile(values.values(), q)


def render_markdown(result: RetrievalResult, info: Provenance) -> str:
    """A human-readable report: provenance, results table, comparisons, published references."""
    lines = [f"# Retrieval on {info.dataset} ({info.split}, {result.queries} queries)", ""]
    lines += _provenance_lines(result, info)
    lines += ["", "## Measured", ""] + _results_table(result, info.dataset)
    lines += ["", f"Search latency is retrieval alone (query already embedded; for hybrid+rerank "
              f"it includes reranking), after one untimed warm-up query per mode. Index MiB: what "
              f"the mode searches (vectors, codes, indexes, postings; plus the reranker's weights "
              f"for hybrid+rerank). Query embedding: p50 "
              f"{_p(result.embed_ms, 50):.1f} ms, p95 {_p(result.embed_ms, 95):.1f} ms. "
              f"Each query retrieves {result.depth} chunks; a document scores as its best chunk."]
    lines += _comparison_lines(compare_modes(result))
    lines += _published_lines(info.dataset)
    return "\n".join(lines) + "\n"


def _provenance_lines(result: RetrievalResult, info: Provenance) -> list[str]:
    rows = [
        ("dataset", f"`{info.dataset_path}` ({info.corpus_documents} documents)"),
        ("dataset sha256", f"`{info.dataset_sha256}`"),
        ("model", result.model), ("collection", result.collection),
        ("modes", ", ".join(m.mode for m in result.modes)),
        ("depth / oversample", f"{result.depth} chunks / {result.oversample} "
                               f"({result.depth * result.oversample} binary candidates)"),
        ("git commit", f"`{info.git_commit}`" if info.git_commit else "unknown (no git)"),
        ("created (UTC)", info.created_utc),
        ("machine at report time", info.machine or "unknown"),
    ]
    if info.command:
        rows.append(("command", f"`{info.command}`"))
    if info.models:
        rows.append(("models", ", ".join(f"{k}: {v}" for k, v in info.models.items())))
    if info.configuration:
        rows.append(("configuration", f"`{json.dumps(info.configuration, sort_keys=True)}`"))
    if info.prompt_hashes:
        rows.append(("prompt sha256", ", ".join(f"{k} `{v[:12]}`"
                                                for k, v in sorted(info.prompt_hashes.items()))))
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _results_table(result: RetrievalResult, dataset: str = "") -> list[str]:
    metrics = list(result.modes[0].metrics) if result.modes else []
    head = ["mode", *metrics, "search p50 ms", "search p95 ms", "docs/query", "index MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in result.modes:
        cells = [m.mode, *[f"{m.metrics[k]:.4f}" for k in metrics], f"{m.p50_ms:.1f}",
                 f"{m.p95_ms:.1f}", f"{m.docs_per_query:.1f}",
                 f"{m.index_total_bytes / 2**20:.1f}" if m.index_bytes else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    by_system: dict[str, dict[str, float]] = {}
    for ref in PUBLISHED.get(dataset, ()):
        if ref.metric in metrics:
            by_system.setdefault(ref.system, {})[ref.metric] = ref.value
    for system, values in by_system.items():  # beside ours, never mixed with them
        cells = [f"*{system}, published*", *[f"*{values[k]:.3f}*" if k in values else "–"
                                            for k in metrics], "–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _comparison_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Differences (paired bootstrap over queries, 10,000 resamples)", "",
             "| mode − baseline | metric | mean diff | 95% CI | p |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} − {r['baseline']} | {r['metric']} | {r['mean_diff']:+.4f} | "
                     f"[{r['ci95_low']:+.4f}, {r['ci95_high']:+.4f}] | {r['p_value']:.4f} |")
    return lines


def _published_lines(dataset: str) -> list[str]:
    refs = PUBLISHED.get(dataset, ())
    lines = ["", "## Published reference (from the literature, not measured here)", ""]
    if not refs:
        return [*lines, "None on file for this dataset."]
    return [*lines, *[f"- {r.system} on {dataset}: {r.metric} = {r.value:.3f} "
                      f"(published, {r.source}; not measured by this run)" for r in refs]]


def write_reports(result: RetrievalResult, info: Provenance, out_dir: Path,
                  dataset: BeirDataset | None = None) -> tuple[Path, Path]:
    """Write ``retrieval.md``, ``retrieval.json`` and ``retrieval.html`` into ``out_dir``.

    Returns:
        The Markdown and JSON paths (the HTML page lies beside them).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, data = out_dir / "retrieval.md", out_dir / "retrieval.json"
    report = report_data(result, info, dataset)
    markdown.write_text(render_markdown(result, info), encoding="utf-8")
    data.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_html(report, out_dir / "retrieval.html")
    return markdown, data
