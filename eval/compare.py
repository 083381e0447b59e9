"""Comparing evaluation runs and gating on their numbers.

A *run* is a report JSON written by ``verity eval retrieval`` (``retrieval.json``)
or ``verity eval qa`` (``qa-<dataset>.json``). Both hold per-query values, so
two runs over the same queries can be compared query by query: the paired
bootstrap (:func:`eval.metrics.paired_bootstrap`) gives each difference a
confidence interval, and a difference whose interval excludes zero is
reported as significant.

Gates (``--fail-if "ndcg@10 < 0.70"``) turn numbers into an exit code for CI.

Example:
    >>> a, b = load_run(Path("reports/before")), load_run(Path("reports/after"))
    >>> for row in compare_runs(a, b):
    ...     print(row["config"], row["metric"], row["diff"], row["significant"])
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.datasets import DatasetError
from eval.html import escape, fmt, page, provenance_details, table, write_html
from eval.outcomes import outcome_from_json, per_question
from eval.stats import N_RESAMPLES, paired_rows


class RunError(DatasetError):
    """A run (report JSON) that cannot be read or compared; the message says why."""


class GateError(ValueError):
    """A ``--fail-if`` expression that cannot be parsed or names an unknown metric."""


# --- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """A report JSON, reduced to what comparisons and gates need.

    ``configs`` maps each configuration (a retrieval mode or a QA config) to its
    per-query values; ``summary`` to its aggregate numbers.
    """

    path: Path
    kind: str
    data: dict[str, Any]
    configs: dict[str, dict[str, dict[str, float]]]
    summary: dict[str, dict[str, float]]

    @property
    def dataset_sha256(self) -> str | None:
        prov = self.data.get("provenance", {})
        return prov.get("dataset_sha256") if isinstance(prov, dict) else None


def find_report(path: Path) -> Path:
    """The report JSON at ``path``: the file itself, or the one report JSON in a folder.

    Raises:
        RunError: nothing there, or a folder with several reports (name one).
    """
    if path.is_file():
        return path
    if not path.is_dir():
        raise RunError(f"{path}: no such report file or folder")
    found = sorted(p for p in path.glob("*.json")
                   if p.name == "retrieval.json" or p.name.startswith("qa-"))
    if not found:
        raise RunError(f"{path}: no retrieval.json or qa-*.json report in this folder")
    if len(found) > 1:
        raise RunError(f"{path}: several reports ({', '.join(p.name for p in found)}); "
                       "pass the JSON file to compare")
    return found[0]


def load_run(path: Path) -> RunData:
    """Read a retrieval or QA report JSON (or the folder holding one).

    Raises:
        RunError: unreadable, not JSON, or not a report this harness wrote.
    """
    file = find_report(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"{file}: cannot read the report ({e})") from e
    if not isinstance(data, dict):
        raise RunError(f"{file}: not a report (expected a JSON object)")
    if data.get("kind") == "retrieval" or "modes" in data:
        configs, summary = _retrieval_tables(data)
        kind = "retrieval"
    elif "outcomes" in data:
        configs, summary = _qa_tables(data)
        kind = "qa"
    else:
        raise RunError(f"{file}: not a retrieval or QA report (no 'modes' or 'outcomes')")
    return RunData(path=file, kind=kind, data=data, configs=configs, summary=summary)


def _retrieval_tables(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    configs, summary = {}, {}
    for mode in data.get("modes", []):
        per_query = {m: dict(v) for m, v in mode.get("per_query", {}).items()}
        if mode.get("per_query_search_ms"):
            per_query["search_ms"] = dict(mode["per_query_search_ms"])
        configs[mode["mode"]] = per_query
        latency = mode.get("search_ms", {})
        summary[mode["mode"]] = {**mode.get("metrics", {}),
                                 **{f"search_{k}_ms": v for k, v in latency.items()}}
    return configs, summary


def _qa_tables(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    configs = {c: per_question([outcome_from_json(o) for o in outs])
               for c, outs in data.get("outcomes", {}).items()}
    summary = {c: {k: float("nan") if v is None else v for k, v in s.items()
                   if v is None or isinstance(v, int | float)}
               for c, s in data.get("summary", {}).items()}
    return configs, summary


def pair_configs(a: RunData, b: RunData) -> list[tuple[str, str]]:
    """Configurations of ``a`` and ``b`` to compare: same names; or the only one of each."""
    common = [c for c in b.configs if c in a.configs]
    if common:
        return [(c, c) for c in common]
    if len(a.configs) == 1 and len(b.configs) == 1:
        return [(next(iter(a.configs)), next(iter(b.configs)))]
    raise RunError(f"no configuration in common: {', '.join(a.configs)} vs {', '.join(b.configs)}")


def compare_runs(a: RunData, b: RunData, *, n_resamples: int = N_RESAMPLES) -> list[dict[str, Any]]:
    """What changed from run ``a`` to run ``b``: per configuration and metric, ``b − a``.

    Raises:
        RunError: the runs are of different kinds or share no configuration or query.
    """
    if a.kind != b.kind:
        raise RunError(f"cannot compare a {a.kind} run with a {b.kind} run")
    rows = []
    for config_a, config_b in pair_configs(a, b):
        for row in paired_rows(b.configs[config_b], a.configs[config_a], n_resamples=n_resamples):
            name = config_b if config_a == config_b else f"{config_a} → {config_b}"
            rows.append({"config": name, "metric": row["metric"], "n": row["n"],
                         "a": row["baseline_value"], "b": row["value"], "diff": row["mean_diff"],
                         "ci95_low": row["ci95_low"], "ci95_high": row["ci95_high"],
                         "p_value": row["p_value"], "significant": row["significant"]})
    if not rows:
        raise RunError("the runs share no judged query; were they run on the same dataset?")
    return rows


def render_comparison(a: RunData, b: RunData, rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown comparison: both runs' provenance, then one line per configuration and metric."""
    lines = [f"# Comparison: {a.path} → {b.path}", ""]
    sha_a, sha_b = a.dataset_sha256, b.dataset_sha256
    if sha_a and sha_b and sha_a != sha_b:
        lines += ["**Warning: the runs used different data** (dataset sha256 "
                  f"`{sha_a[:12]}` vs `{sha_b[:12]}`); only queries in both are paired.", ""]
    commits = [r.data.get("provenance", {}).get("git_commit") for r in (a, b)]
    lines += [f"- A: `{a.path}` (commit {commits[0] or 'unknown'})",
              f"- B: `{b.path}` (commit {commits[1] or 'unknown'})",
              f"- Differences are B − A; 95% paired bootstrap intervals over queries "
              f"({N_RESAMPLES:,} resamples); *significant* = the interval excludes 0.", "",
              "| config | metric | n | A | B | B − A | 95% CI | p | significant |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['metric']} | {r['n']} | {_num(r['a'])} | {_num(r['b'])} | "
                     f"{r['diff']:+.4f} | [{r['ci95_low']:+.4f}, {r['ci95_high']:+.4f}] | "
                     f"{r['p_value']:.4f} | {'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines) + "\n"


def render_comparison_html(a: RunData, b: RunData, rows: Sequence[Mapping[str, Any]], *,
                           labels: tuple[str, str] | None = None) -> str:
    """The comparison as a self-contained HTML page: the differences first, then both runs'
    numbers side by side, then their provenance (collapsed).

    Args:
        labels: how to name the runs (default: their paths).
    """
    name_a, name_b = labels or (str(a.path), str(b.path))
    title = f"Comparison: {name_a} → {name_b}"
    body = [f"<h1>{escape(title)}</h1>"]
    sha_a, sha_b = a.dataset_sha256, b.dataset_sha256
    if sha_a and sha_b and sha_a != sha_b:
        body.append(f"<p><strong>Warning: the runs used different data</strong> (dataset sha256 "
                    f"<code>{escape(sha_a[:12])}</code> vs <code>{escape(sha_b[:12])}</code>); "
                    "only queries in both are paired.</p>")
    significant = sum(1 for r in rows if r["significant"])
    body += ['<h2 id="differences">Differences (B − A)</h2>',
             f"<p class=small>A = {escape(name_a)}, B = {escape(name_b)}. {significant} of "
             f"{len(rows)} differences are significant: their 95% paired bootstrap interval over "
             f"queries ({N_RESAMPLES:,} resamples) excludes 0.</p>",
             table(["config", "metric", "n", "A", "B", "B − A", "95% CI", "p", "significant"],
                   [[escape(r["config"]), escape(r["metric"]), escape(r["n"]), fmt(r["a"]),
                     fmt(r["b"]), f"{r['diff']:+.4f}", f"[{r['ci95_low']:+.4f}, "
                     f"{r['ci95_high']:+.4f}]", f"{r['p_value']:.4f}",
                     '<span class="yes">yes</span>' if r["significant"] else "no"] for r in rows],
                   cls="differences",
                   row_classes=["significant" if r["significant"] else "" for r in rows]),
             '<h2 id="summary">Summary side by side</h2>', _side_by_side(a, b)]
    prov = [(k, [run.data.get("provenance", {}).get(k) for run in (a, b)])
            for k in dict.fromkeys([*a.data.get("provenance", {}), *b.data.get("provenance", {})])]
    body.append(provenance_details(table(["", "A", "B"], [
        [f"<code>{escape(k)}</code>", *[_cell(v) for v in values]]
        for k, values in prov])))
    return page(title, body)


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"<code>{escape(json.dumps(value, ensure_ascii=False, sort_keys=True))}</code>"
    return "" if value is None else escape(value)


def _side_by_side(a: RunData, b: RunData) -> str:
    rows = []
    for config in dict.fromkeys([*a.summary, *b.summary]):
        sa, sb = a.summary.get(config, {}), b.summary.get(config, {})
        rows += [[escape(config), escape(m), fmt(sa.get(m)), fmt(sb.get(m))]
                 for m in dict.fromkeys([*sa, *sb])]
    return table(["config", "metric", "A", "B"], rows, cls="summary")


def _num(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.4f}"


# --- gates ---------------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt,
}
_DELTAS = ("delta", "delta_low", "delta_high")
_GATE = re.compile(
    r"^\s*(?:(?P<config>[^:\s]+)\s*:\s*)?"
    r"(?:(?P<fn>delta|delta_low|delta_high)\(\s*(?P<inner>[^()\s]+)\s*\)|(?P<metric>[^\s<>=!]+))"
    r"\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    """A failure condition: ``[config:]metric op number``, or ``delta(metric) op number``.

    The run fails when the condition *holds*. Without a config every
    configuration that has the metric is checked. ``delta(m)``, ``delta_low(m)``
    and ``delta_high(m)`` (``verity eval compare`` and ``--baseline`` only) are the
    mean difference B − A and its 95% interval's ends, so
    ``delta_high(ndcg@10) < 0`` fails on a significant drop.
    """

    text: str
    metric: str
    op: str
    threshold: float
    config: str | None = None
    delta: str | None = None

    @classmethod
    def parse(cls, text: str) -> Gate:
        """Parse ``"ndcg@10 < 0.70"``, ``"crag:accuracy < 0.4"`` or ``"delta(f1) < -0.02"``.

        Raises:
            GateError: the text is not ``[config:]metric op number``.
        """
        m = _GATE.match(text)
        if not m:
            raise GateError(f"cannot parse gate {text!r}; write '[config:]metric OP number' with OP "
                            "one of < <= > >= == !=, e.g. 'ndcg@10 < 0.70' or 'delta(accuracy) < -0.02'")
        metric = (m["inner"] or m["metric"]).lower()
        return cls(text=text.strip(), metric=metric, op=m["op"], threshold=float(m["value"]),
                   config=m["config"], delta=m["fn"])

    def check(self, values: Mapping[str, Mapping[str, float]]) -> list[str]:
        """Failure messages for ``{config: {metric: value}}`` (empty: the gate passes).

        Raises:
            GateError: the gate names a configuration or metric the run lacks.
        """
        if self.config is not None and self.config not in values:
            raise GateError(f"gate {self.text!r}: no configuration {self.config!r}; "
                            f"the run has {', '.join(values) or 'none'}")
        configs = [self.config] if self.config else list(values)
        checked = [(c, values[c][self.metric]) for c in configs if self.metric in values[c]]
        if not checked:
            known = sorted({m for v in values.values() for m in v})
            raise GateError(f"gate {self.text!r}: no metric {self.metric!r} in the run; "
                            f"known: {', '.join(known)}")
        label = f"{self.delta}({self.metric})" if self.delta else self.metric
        return [f"{c}: {label} = {v:.4f} {self.op} {self.threshold:g}"
                for c, v in checked if not math.isnan(v) and _OPS[self.op](v, self.threshold)]


def parse_gates(texts: Sequence[str]) -> list[Gate]:
    """Parse every ``--fail-if`` text (raises :class:`GateError` on the first bad one)."""
    return [Gate.parse(t) for t in texts]


def check_gates(gates: Sequence[Gate], summary: Mapping[str, Mapping[str, float]],
                comparison: Sequence[Mapping[str, Any]] | None = None) -> list[str]:
    """Every failure of ``gates`` against a run's summary and, for ``delta`` gates, a comparison.

    Raises:
        GateError: a gate names something the run lacks, or a ``delta`` gate has no comparison.
    """
    failures = []
    for gate in gates:
        if gate.delta is None:
            failures += [f"{gate.text}: {msg}" for msg in gate.check(summary)]
            continue
        if comparison is None:
            raise GateError(f"gate {gate.text!r} needs a comparison: use it with `verity eval "
                            "compare` or with --baseline")
        key = {"delta": "diff", "delta_low": "ci95_low", "delta_high": "ci95_high"}[gate.delta]
        table: dict[str, dict[str, float]] = {}
        for row in comparison:
            table.setdefault(row["config"], {})[row["metric"]] = row[key]
        failures += [f"{gate.text}: {msg}" for msg in gate.check(table)]
    return failures


def attach_baseline(report_path: Path, baseline: Path) -> tuple[list[dict[str, Any]], Path]:
    """Compare a freshly written report with a baseline run and record it beside the report.

    The comparison goes into the report's JSON (``baseline_comparison``), its
    HTML page is rendered again, and ``comparison.md`` is written next to it.

    Returns:
        The comparison rows and the path of ``comparison.md``.

    Raises:
        RunError: the baseline cannot be read or shares nothing with the report.
    """
    base, current = load_run(baseline), load_run(report_path)
    rows = compare_runs(base, current)
    data = dict(current.data)
    data["baseline_comparison"] = {"baseline": str(base.path), "rows": rows}
    report_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_html(data, report_path.with_suffix(".html"))
    markdown = report_path.parent / "comparison.md"
    markdown.write_text(render_comparison(base, current, rows), encoding="utf-8")
    return rows, markdown
