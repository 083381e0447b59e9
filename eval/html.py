"""A self-contained HTML page for a retrieval or QA report.

One file, nothing fetched: CSS inline, plots drawn with matplotlib and
embedded as base64 PNG. The page is rendered from the report's JSON data, so
``render_html(json.load(f))`` rebuilds it from any saved run.

Sections, in the order a reader wants them: the summary table with 95%
intervals and published numbers beside ours, the differences (against a
baseline run, then between configurations), plots (metric by configuration
with bootstrap error bars, latency distributions, recall@k curves for
retrieval), published references, the provenance (dataset hash,
configuration, prompt hashes, models, git commit; collapsed), and a
per-question drill-down. Wide tables scroll inside their own box, so the page
fits a 1280 px window.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

QA_METRICS = ("accuracy", "em", "f1", "context_precision", "faithfulness", "citation_validity",
              "abstain_precision", "abstain_recall", "false_abstain")
QA_PLOTTED = ("accuracy", "f1", "context_precision", "faithfulness", "citation_validity")
SNIPPET_CHARS = 400
MAX_DRILLDOWN_ROWS = 1000

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1d2330;line-height:1.4}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #d8dce4;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #d8dce4;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.published td{font-style:italic;color:#5b6478;background:#fafafa}
.yes{color:#17803d;font-weight:600}.no{color:#b42318;font-weight:600}
.ci{color:#5b6478;font-size:.8rem}figure{display:inline-block;margin:.5rem 1rem .5rem 0}
figcaption{font-size:.85rem;color:#5b6478}code{font-size:.85rem}
details{margin:.1rem 0}summary{cursor:pointer}.cited{background:#fff6d6}
.rel{font-weight:600;color:#17803d}.small{font-size:.8rem;color:#5b6478}
.scroll{max-width:100%;overflow-x:auto}img{max-width:100%;height:auto}figure{max-width:100%}
table.provenance td{overflow-wrap:anywhere}details.provenance{margin-top:2rem}
details.provenance>summary{font-size:1.25rem;font-weight:600}
tr.significant td{background:#f3f8ff}
"""


def write_html(report: Mapping[str, Any], path: Path) -> Path:
    """Render ``report`` (a retrieval or QA report's JSON data) into ``path``."""
    path.write_text(render_html(report), encoding="utf-8")
    return path


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page as one string."""
    qa = report.get("kind") == "qa" or "outcomes" in report
    title = _title(report, qa=qa)
    body = [f"<h1>{escape(title)}</h1>"]
    body += _qa_sections(report) if qa else _retrieval_sections(report)
    body += [_provenance(report), _qa_drilldown(report) if qa else _retrieval_drilldown(report)]
    return page(title, body)


def page(title: str, body: Sequence[str]) -> str:
    """A whole HTML page: ``title`` and the ``body`` fragments, with the reports' style sheet."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def _title(report: Mapping[str, Any], *, qa: bool) -> str:
    prov = report.get("provenance", {})
    if qa:
        return f"QA evaluation: {report.get('dataset') or prov.get('dataset', '')}"
    return f"Retrieval evaluation: {prov.get('dataset', '')} ({prov.get('split', '')})"


# --- shared pieces -------------------------------------------------------------------------


def escape(value: Any) -> str:
    """``value`` as text, escaped for HTML."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number as reports show it (4 decimals below 10, 1 above; – for none or NaN)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return escape(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            return "–"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.4f}"
    return escape(value)


def table(head: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "",
          row_classes: Sequence[str] | None = None) -> str:
    """A table of escaped ``head`` cells and ready-made HTML ``rows``, in a box that scrolls
    sideways when the table is wider than the page (focusable, so keys scroll it too)."""
    out = [f'<div class="scroll" tabindex="0"><table class="{cls}"><thead><tr>'
           + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        out.append(f"<tr{rc}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return "\n".join(out) + "</tbody></table></div>"


def _provenance(report: Mapping[str, Any]) -> str:
    prov = dict(report.get("provenance", {}))
    for key in ("configs", "setup", "judge"):
        if key in report and key not in prov:
            prov[key] = report[key]
    rows = [[f"<code>{escape(k)}</code>", _value(v)] for k, v in prov.items()
            if v not in (None, "", {})]
    return provenance_details(table(["", ""], rows, cls="provenance"))


def provenance_details(inner: str) -> str:
    """The provenance section, collapsed: it is long, and read after the numbers."""
    return ('<details class="provenance" id="provenance"><summary>Provenance (data, code, '
            f"models, configuration)</summary>{inner}</details>")


def _value(v: Any) -> str:
    if isinstance(v, dict | list):
        return f"<code>{escape(json.dumps(v, ensure_ascii=False, sort_keys=True))}</code>"
    return escape(v)


def _ci(ci: Sequence[float] | None) -> str:
    if not ci or any(math.isnan(x) for x in ci):
        return ""
    return f' <span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>'


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(fig: Any, caption: str) -> str:
    return (f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{_png(fig)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars_with_ci(values: Mapping[str, Mapping[str, float]], cis: Mapping[str, Mapping[str, Any]],
                  metrics: Sequence[str], title: str) -> str:
    """Grouped bars: one group per metric, one bar per configuration, 95% CI error bars."""
    plt = _pyplot()
    configs = list(values)
    metrics = [m for m in metrics if any(not _nan(values[c].get(m)) for c in configs)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(metrics) * max(1, len(configs)) ** 0.5), 3.6))
    width = 0.8 / max(1, len(configs))
    for i, config in enumerate(configs):
        ys = [_zero(values[config].get(m)) for m in metrics]
        lows, highs = [], []
        for m, y in zip(metrics, ys, strict=True):
            low, high = _error_bar(y, cis.get(config, {}).get(m))
            lows.append(low)
            highs.append(high)
        xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, ys, width, yerr=[lows, highs], capsize=3, label=config)
    ax.set_xticks(range(len(metrics)), metrics, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _figure(fig, f"{title} (error bars: 95% bootstrap interval over queries)")


def _latency_plot(latencies: Mapping[str, Sequence[float]], title: str) -> str:
    plt = _pyplot()
    configs = [c for c, v in latencies.items() if v]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(configs)), 3.4))
    if configs:
        ax.boxplot([list(latencies[c]) for c in configs], showfliers=True)
        ax.set_xticks(range(1, len(configs) + 1), configs, rotation=15)
    ax.set_ylabel("ms")
    ax.set_title(title)
    return _figure(fig, f"{title}: box = quartiles, whiskers = 1.5 IQR, dots = outliers")


def _error_bar(y: float, ci: Sequence[float] | None) -> tuple[float, float]:
    """How far a bar of height ``y`` reaches down and up to its 95% CI (none when it is unknown)."""
    if not ci or any(_nan(x) for x in ci):
        return 0.0, 0.0
    return max(0.0, y - ci[0]), max(0.0, ci[1] - y)


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _zero(x: Any) -> float:
    return 0.0 if _nan(x) else float(x)


def _comparison_table(rows: Sequence[Mapping[str, Any]], *, title: str, against: str) -> str:
    if not rows:
        return ""
    body = []
    for r in rows:
        diff = r.get("mean_diff", r.get("diff"))
        low, high = r.get("ci95_low", r.get("low")), r.get("ci95_high", r.get("high"))
        sig = r.get("significant", low is not None and (low > 0 or high < 0))
        body.append([escape(r.get("config", r.get("mode", ""))), escape(r.get(against, "")),
                     escape(r["metric"]), f"{diff:+.4f}", f"[{low:+.4f}, {high:+.4f}]",
                     f"{r.get('p_value', float('nan')):.4f}",
                     '<span class="yes">yes</span>' if sig else '<span class="no">no</span>'])
    return (f"<h2>{escape(title)}</h2><p class=small>Paired bootstrap over queries; significant = "
            "the 95% interval excludes 0.</p>"
            + table(["config", "against", "metric", "difference", "95% CI", "p", "significant"],
                    body, cls="comparisons"))


def _baseline_section(report: Mapping[str, Any]) -> str:
    base = report.get("baseline_comparison")
    if not base:
        return ""
    rows = [{**r, "mean_diff": r["diff"], "against": "baseline"} for r in base.get("rows", [])]
    return (_comparison_table(rows, title=f"Against the baseline run {base.get('baseline', '')}",
                              against="against")
            if rows else "")


def _published_rows(report: Mapping[str, Any], metrics: Sequence[str]) -> tuple[list[list[str]],
                                                                                  list[str]]:
    systems: dict[str, dict[str, float]] = {}
    for ref in report.get("published_references", []):
        systems.setdefault(ref["system"], {})[ref["metric"]] = ref["value"]
    rows = [[f"{escape(s)} <b>(published)</b>",
             *[f"{v[m]:.3f}" if m in v else "–" for m in metrics]]
            for s, v in systems.items() if any(m in v for m in metrics)]
    return rows, ["published"] * len(rows)


def _published_list(report: Mapping[str, Any]) -> str:
    refs = report.get("published_references", [])
    if not refs:
        return "<h2>Published references</h2><p>None on file for this dataset.</p>"
    items = "".join(f"<li>{escape(r['system'])}: {escape(r['metric'])} = {r['value']:.3f} "
                    f"<i>(published, {escape(r['source'])}; not measured by this run)</i></li>"
                    for r in refs)
    return f"<h2>Published references (from the literature, not measured here)</h2><ul>{items}</ul>"


# --- retrieval -----------------------------------------------------------------------------


def _retrieval_sections(report: Mapping[str, Any]) -> list[str]:
    modes = report.get("modes", [])
    metrics = list(modes[0]["metrics"]) if modes else []
    rows = []
    for m in modes:
        ci = m.get("ci95", {})
        rows.append([escape(m["mode"]),
                     *[f'{m["metrics"][k]:.4f}{_ci(ci.get(k))}' for k in metrics],
                     fmt(m["search_ms"]["p50"]), fmt(m["search_ms"]["p95"])])
    pub, classes = _published_rows(report, metrics)
    rows += [r + ["–", "–"] for r in pub]
    out = ['<h2 id="summary">Summary</h2>',
           table(["mode", *metrics, "search p50 ms", "search p95 ms"], rows, cls="summary",
                 row_classes=[""] * len(modes) + classes)]
    out.append(_baseline_section(report))
    out.append(_comparison_table(report.get("comparisons", []), title="Differences between modes",
                                 against="baseline"))
    out.append("<h2>Plots</h2>")
    values = {m["mode"]: m["metrics"] for m in modes}
    cis = {m["mode"]: m.get("ci95", {}) for m in modes}
    if modes:
        out.append(_bars_with_ci(values, cis, metrics, "Metric by mode"))
        out.append(_latency_plot({m["mode"]: list(m.get("per_query_search_ms", {}).values())
                                  for m in modes}, "Search latency"))
    curves = {m["mode"]: m["recall_curve"] for m in modes if m.get("recall_curve")}
    if curves:
        out.append(_recall_curves(curves))
    out.append(_published_list(report))
    return out


def _recall_curves(curves: Mapping[str, Mapping[str, float]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for mode, curve in curves.items():
        ks = sorted(int(k) for k in curve)
        ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("k (documents)")
    ax.set_ylabel("mean recall@k")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Recall@k")
    return _figure(fig, "Recall@k curves")


def _retrieval_drilldown(report: Mapping[str, Any]) -> str:
    rows = report.get("drilldown", [])
    if not rows:
        return ""
    modes = list(rows[0]["hits"])
    head = ["query id", "query", "relevant (grade)", *[f"{m}: top hits" for m in modes]]
    body = []
    for r in rows[:MAX_DRILLDOWN_ROWS]:
        relevant = ", ".join(f"{escape(d)} ({r['grades'].get(d, '')})" for d in r["relevant"])
        cells = [escape(r["id"]), escape(r["query"]), relevant]
        for m in modes:
            hits = " ".join(f'<span class="rel">{escape(h["doc"])}✓</span>' if h["grade"] >= 1
                            else escape(h["doc"]) for h in r["hits"].get(m, []))
            ndcg = r.get("scores", {}).get(m, {}).get("ndcg@10")
            cells.append(hits + (f' <span class="ci">ndcg@10 {ndcg:.3f}</span>'
                                 if ndcg is not None else ""))
        body.append(cells)
    more = (f"<p class=small>First {MAX_DRILLDOWN_ROWS} of {len(rows)} queries; the JSON has all.</p>"
            if len(rows) > MAX_DRILLDOWN_ROWS else "")
    return ("<h2>Per-query drill-down</h2><p class=small>Top hits best first; ✓ = judged "
            "relevant.</p>" + table(head, body, cls="drilldown") + more)


# --- QA ------------------------------------------------------------------------------------


def _qa_sections(report: Mapping[str, Any]) -> list[str]:
    summary = report.get("summary", {})
    cis = report.get("ci95", {})
    metrics = [m for m in QA_METRICS if any(not _nan(s.get(m)) for s in summary.values())]
    rows = [[escape(c), *[f"{fmt(s.get(m))}{_ci(cis.get(c, {}).get(m))}" for m in metrics],
             fmt(s.get("latency_p50_ms")), fmt(s.get("latency_p95_ms")),
             fmt(s.get("tokens_per_answer"))] for c, s in summary.items()]
    pub, classes = _published_rows(report, metrics)
    rows += [r + ["–", "–", "–"] for r in pub]
    judge = report.get("judge") or "not judged"
    out = ['<h2 id="summary">Summary</h2>',
           f"<p class=small>Faithfulness judge: {escape(judge)}. Accuracy = a gold answer is contained "
           "in the answer; answer metrics and context precision over answerable questions.</p>",
           table(["config", *metrics, "latency p50 ms", "latency p95 ms", "tokens/answer"], rows,
                  cls="summary", row_classes=[""] * len(summary) + classes)]
    out.append(_stage_table(summary))
    out.append(_baseline_section(report))
    out.append(_comparison_table(report.get("comparisons", []), title="Differences between "
                                 "configurations", against="baseline"))
    out.append("<h2>Plots</h2>")
    if summary:
        out.append(_bars_with_ci(summary, cis, QA_PLOTTED, "Answer quality by configuration"))
        outcomes = report.get("outcomes", {})
        out.append(_latency_plot({c: [o["latency_ms"] for o in outs] for c, outs in outcomes.items()},
                                 "Answer latency"))
    out.append(_published_list(report))
    return out


def _stage_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    stages = sorted({k.removesuffix("_p50_ms") for s in summary.values() for k in s
                     if k.endswith("_p50_ms") and k != "latency_p50_ms"})
    if not stages:
        return ""
    rows = [[escape(c), *[f"{fmt(s.get(f'{st}_p50_ms'))} / {fmt(s.get(f'{st}_p95_ms'))}"
                      for st in stages]] for c, s in summary.items()]
    return ("<h3>Latency per stage (p50 / p95 ms)</h3>"
            + table(["config", *stages], rows, cls="stages"))


def _qa_drilldown(report: Mapping[str, Any]) -> str:
    outcomes = report.get("outcomes", {})
    out = ["<h2>Per-question drill-down</h2>"]
    for config, outs in outcomes.items():
        body = [_qa_row(o) for o in outs[:MAX_DRILLDOWN_ROWS]]
        out.append(f"<h3>{escape(config)}</h3>")
        out.append(table(["id", "question", "gold", "answer", "status", "CRAG action", "correct",
                           "faithful", "sources (cited highlighted)"], body, cls="drilldown"))
        if len(outs) > MAX_DRILLDOWN_ROWS:
            out.append(f"<p class=small>First {MAX_DRILLDOWN_ROWS} of {len(outs)}; the JSON has all.</p>")
    return "\n".join(out)


def _qa_row(o: Mapping[str, Any]) -> list[str]:
    cited = set(o.get("cited", []))
    relevant = list(o.get("context_relevant", []))
    items = []
    for i, s in enumerate(o.get("sources", [])):
        mark = " ✓relevant" if i < len(relevant) and relevant[i] else ""
        cls = ' class="cited"' if s.get("document") in cited else ""
        text = str(s.get("text", ""))
        snippet = text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")
        items.append(f"<details{cls}><summary>[{escape(s.get('n'))}] {escape(s.get('document'))}{mark}"
                     f"</summary>{escape(snippet)}</details>")
    correct = "–" if o.get("unanswerable") else (
        '<span class="yes">yes</span>' if o.get("contains") else '<span class="no">no</span>')
    faithful = o.get("faithfulness")
    gold = " | ".join(o.get("gold", [])) or ("(unanswerable)" if o.get("unanswerable") else "")
    return [escape(o.get("id")), escape(o.get("question", "")), escape(gold),
            escape(o.get("answer", "")), escape(o.get("status", "")),
            escape(o.get("action") or "–"), correct,
            "–" if faithful is None else f"{faithful:.2f}", "".join(items) or "–"]
