"""The web page's Evaluations view in a real browser (the system's Chromium, via Playwright):
saved reports made by the real harness, listed, opened and compared through the real API."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from eval.archive import ReportFolder
from service.app import create_app
from tests.helpers import save_eval_reports, serve_app
from tests.integration.conftest import axe_violations
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys

pytestmark = pytest.mark.integration


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _use_key(page: Any, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use key").click()


ORDER = """() => {
  const shown = document.getElementById('evals-shown');
  const text = shown.innerText;
  return {summary: text.indexOf('Summary'), provenance: text.indexOf('Provenance'),
          differences: text.indexOf('Differences (B − A)'),
          width: document.scrollingElement.scrollWidth,
          scripts: [...document.scripts].map((s) => s.src.split('/').pop()),
          images: [...shown.querySelectorAll('img')].filter((i) => i.naturalWidth > 100).length};
}"""


PLOTS_DECODED = """() => [...document.querySelectorAll('#evals-shown img')]
  .filter((i) => i.complete && i.naturalWidth > 100).length === 3"""


PLOTS_ON_THEIR_OWN = """() => [...document.images]
  .filter((i) => i.complete && i.naturalWidth > 100).length === 3"""


def test_list_open_and_compare_reports_in_a_real_browser(
    retrieval_runtime: Runtime, browser_page: Any, tmp_path: Path
) -> None:
    names = save_eval_reports(tmp_path / "reports")
    settings = retrieval_runtime.settings.model_copy(update={
        "server": retrieval_runtime.settings.server.model_copy(update={"auth": True})})
    runtime = replace(retrieval_runtime, settings=settings)
    app = create_app(settings, runtime=runtime, reports=ReportFolder(tmp_path / "reports"))
    app.state.runtime = runtime  # served without its lifespan, which would set it
    keys = ApiKeys(retrieval_runtime.db)
    member, admin = keys.create(tenant="web-evals")[0], keys.create(tenant="web-evals",
                                                                    is_admin=True)[0]
    page = browser_page
    with serve_app(app) as url:
        page.goto(url + "/")
        _use_key(page, member)
        page.get_by_role("button", name="Evaluations").click()
        expect(page.locator("#evals-status")).to_contain_text("An admin key is needed")
        _use_key(page, admin)
        page.get_by_role("button", name="Evaluations").click()
        expect(page.locator("#evals tr")).to_have_count(3)
        expect(page.locator("#evals-status")).to_have_text("3 saved reports.")
        row = page.locator("#evals tr", has_text=names["after"])
        expect(row).to_contain_text("accuracy 0.875")

        # Open one, from the keyboard.
        page.get_by_role("button", name=names["retrieval"]).focus()
        page.keyboard.press("Enter")
        expect(page.locator("#evals-shown .label")).to_have_text(f"Report {names['retrieval']}")
        expect(page.locator("#evals-shown h3")).to_have_text("Retrieval evaluation: scifact (test)")
        expect(page.locator("#evals-shown h3")).to_be_focused()
        page.wait_for_function(PLOTS_DECODED)
        seen = page.evaluate(ORDER)
        assert 0 <= seen["summary"] < seen["provenance"], seen
        assert seen["images"] == 3  # the report's plots, embedded images kept
        assert seen["width"] <= 1280 and "evals.js" in seen["scripts"]
        assert axe_violations(page) == []

        # Tick two and compare: the differences first, then both side by side.
        page.get_by_label(f"Compare {names['before']}").check()
        page.get_by_label(f"Compare {names['after']}").focus()
        page.keyboard.press("Space")
        expect(page.get_by_label(f"Compare {names['after']}")).to_be_focused()
        page.get_by_role("button", name="Compare the two ticked").click()
        expect(page.locator("#evals-shown .pair > .report")).to_have_count(2)
        expect(page.locator("#evals-shown .label")).to_have_text(
            ["What changed from A to B", f"A: {names['before']}",
             f"B: {names['after']}"])
        shown = page.locator("#evals-shown")
        expect(shown.locator("h3").first).to_have_text(
            f"Comparison: {names['before']} → {names['after']}")
        expect(shown).to_contain_text("Differences (B − A)")
        expect(shown.locator("tr.significant").first).to_contain_text("accuracy")
        seen = page.evaluate(ORDER)
        assert 0 <= seen["differences"] < seen["summary"] < seen["provenance"], seen
        assert seen["width"] <= 1280, seen
        assert axe_violations(page) == []
        page.screenshot(path=str(tmp_path / "evaluations-full.png"), full_page=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(tmp_path / "evaluations.png"))

        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 390
        page.locator("#evals-compare").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "evaluations-narrow.png"))
        page.set_viewport_size({"width": 1280, "height": 900})

        # A third tick lets the oldest go; the report's own markup never runs.
        page.get_by_label(f"Compare {names['retrieval']}").check()
        expect(page.get_by_label(f"Compare {names['before']}")).not_to_be_checked()
        assert page.locator("#evals-shown script, #evals-shown style").count() == 0

        # Opened on its own, a report page is sandboxed yet whole: its styles and plots load.
        page.set_extra_http_headers({"Authorization": f"Bearer {admin}"})
        page.goto(f"{url}/v1/eval/reports/{names['retrieval']}")
        page.wait_for_function(PLOTS_ON_THEIR_OWN)
        assert page.evaluate("getComputedStyle(document.querySelector('table')).borderCollapse") \
            == "collapse"
        assert page.evaluate("window.origin") == "null"  # opaque: no access to the page's key
    # The README's pictures: TEST_SCREENSHOTS_DIR=docs/screenshots refreshes them.
    if os.environ.get("TEST_SCREENSHOTS_DIR"):
        target = Path(os.environ["TEST_SCREENSHOTS_DIR"])
        for name in ("evaluations.png", "evaluations-narrow.png"):
            (target / name).write_bytes((tmp_path / name).read_bytes())
