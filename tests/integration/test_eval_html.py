"""The HTML reports render in a real browser: headless Chromium loads each page and a probe
script, added to a copy of the page, records what the browser laid out and decoded.

``make test`` installs Chromium on Debian (CI runs as root); elsewhere, without
``/usr/bin/chromium``, these tests skip and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from eval.datasets import load_beir
from eval.qa import score
from eval.qa import write_reports as write_qa_reports
from eval.qa_datasets import QADataset, QAExample
from eval.report import provenance, write_reports
from eval.retrieval import evaluate_retrieval
from tests.fakes import WordEmbedder, word_store
from tests.helpers import write_beir
from tests.unit.test_eval_retrieval import QRELS, QUERIES
from verity.core.types import Answer, Citation

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  // The provenance table is collapsed on purpose: it comes after the numbers, closed.
  const tables = [...document.querySelectorAll('table')]
    .filter(t => !t.closest('details.provenance:not([open])'));
  const probe = {
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100).length,
    tables: tables.length,
    visible_tables: tables.filter(t => t.offsetHeight > 0 && t.offsetWidth > 0).length,
    collapsed_tables: document.querySelectorAll('details.provenance:not([open]) table').length,
    drilldown_rows: document.querySelectorAll('table.drilldown tbody tr').length,
    published_rows: document.querySelectorAll('table.summary tr.published').length,
    scripts: document.scripts.length,
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>"""


def render_in_chromium(page: Path, tmp_path: Path) -> dict[str, Any]:
    """Load a copy of ``page`` with the probe in headless Chromium; return what the probe saw."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get on Debian)")
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                      encoding="utf-8")
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run; chromium said: {done.stderr[-2000:]}"
    return dict(json.loads(found.group(1).replace("&quot;", '"')))


def test_retrieval_report_renders_tables_plots_and_drilldown(tmp_path: Path) -> None:
    # Named scifact so the published numbers are shown beside the measured ones.
    data = replace(load_beir(write_beir(tmp_path / "scifact")), queries=QUERIES, qrels=QRELS)
    result = evaluate_retrieval(store=word_store([("d1", "cat cat"), ("d1", "fish"), ("d2", "dog"),
                                                  ("d3", "bird dog")]),
                                embedder=WordEmbedder(), queries=QUERIES, qrels=QRELS,
                                collection="c", modes=["dense-float32", "dense-binary-rescore"],
                                depth=10, oversample=3, metrics=["ndcg@10", "recall@100", "map"])
    _, report = write_reports(result, provenance(data), tmp_path / "out", data)
    seen = render_in_chromium(report.with_suffix(".html"), tmp_path)
    assert seen["images"] == 3 and seen["decoded"] == 3  # metric bars, latency, recall@k
    assert seen["tables"] == seen["visible_tables"] >= 3  # summary, differences, drill-down
    assert seen["collapsed_tables"] == 1  # provenance
    assert seen["drilldown_rows"] == len(QRELS)
    assert seen["published_rows"] >= 1
    assert seen["scripts"] == 1  # the probe: the page itself runs no script


def test_qa_report_renders_with_cjk_text_and_escaped_markup(tmp_path: Path) -> None:
    examples = [QAExample("0", "Who wrote <b>Hamlet</b>?", ("Shakespeare",)),
                QAExample("1", "印控克什米尔地区寺庙踩踏事故死亡人数", ("12人",), answer_groups=(("12人",),)),
                QAExample("2", "What is unknowable?", (), unanswerable=True)]
    data = QADataset("popqa_crag", examples, [])
    sources = (Citation(1, "hamlet.txt", "c1", "Hamlet is a tragedy by William Shakespeare."),
               Citation(2, "news.txt", "c2", "事故造成至少12人死亡。"))
    answers = [Answer("William Shakespeare wrote it [1].", "answered", sources[:1], sources),
               Answer("事故造成12人死亡 [2]。", "answered", sources[1:], sources,
                      trace={"action": "correct"}),
               Answer("The documents do not say.", "abstained", (), sources,
                      trace={"action": "incorrect"})]
    results = {config: [score(e, config, a, 100.0 + i) for i, (e, a) in
                        enumerate(zip(examples, answers, strict=True))] for config in ("rag", "crag")}
    _, report = write_qa_reports(data, results, {"dataset": "popqa_crag", "git_commit": "abc"},
                                 tmp_path / "out", judge="none")
    page = report.with_suffix(".html")
    text = page.read_text(encoding="utf-8")
    assert "&lt;b&gt;Hamlet&lt;/b&gt;" in text and "<b>Hamlet</b>" not in text
    seen = render_in_chromium(page, tmp_path)
    assert seen["images"] == 2 and seen["decoded"] == 2  # quality bars, latency
    assert seen["drilldown_rows"] == 2 * len(examples)
    # PopQA's published numbers are CRAG's gains over RAG, not an accuracy: listed, not tabled.
    assert seen["published_rows"] == 0 and seen["tables"] == seen["visible_tables"]
    assert "CRAG minus RAG, SelfRAG-LLaMA2-7b: accuracy gain = 0.190" in text


LAYOUT = """() => {
  const summary = document.getElementById('summary') || document.getElementById('differences');
  const provenance = document.getElementById('provenance');
  return {width: document.scrollingElement.scrollWidth,
          summary_first: !!(summary.compareDocumentPosition(provenance)
                            & Node.DOCUMENT_POSITION_FOLLOWING),
          summary_top: summary.getBoundingClientRect().top,
          provenance_open: provenance.open};
}"""


def test_report_pages_lead_with_the_summary_and_fit_1280_px(browser_page: Any,
                                                             tmp_path: Path) -> None:
    from eval.compare import compare_runs, load_run, render_comparison_html
    from tests.helpers import save_eval_reports

    names = save_eval_reports(tmp_path / "reports")
    pages = {kind: tmp_path / "reports" / f"{name}.html" for kind, name in names.items()}
    a, b = load_run(tmp_path / "reports" / f"{names['before']}.json"), load_run(
        tmp_path / "reports" / f"{names['after']}.json")
    pages["comparison"] = tmp_path / "comparison.html"
    pages["comparison"].write_text(render_comparison_html(a, b, compare_runs(a, b)),
                                   encoding="utf-8")
    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 800})
    for kind, path in pages.items():
        page.goto(path.as_uri())
        seen = page.evaluate(LAYOUT)
        assert seen["width"] <= 1280, (kind, seen)
        assert seen["summary_first"] and not seen["provenance_open"], (kind, seen)
        assert seen["summary_top"] < 800, (kind, seen)  # on the first screen
        page.screenshot(path=str(tmp_path / f"report-{kind}-1280.png"))
