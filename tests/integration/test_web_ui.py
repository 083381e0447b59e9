"""The web page in a real browser: ask, watch the answer stream in, verify a citation, stop.

Drives the system's Chromium (``/usr/bin/chromium``) with Playwright over the real
service, the embedded Postgres, the bundled embedder and the local llama.cpp server.
Without Chromium the browser test skips and says why, unless ``TEST_BROWSER_REQUIRED=1``
(``make test``), where it fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import ingest_texts, serve_app
from verity.answering.runtime import Runtime

pytestmark = pytest.mark.integration

CORPUS = {
    "plants.md": "# Office care\n\n## Plants\n\nThe office plants are watered every Tuesday by "
                 "Sam. Sam also feeds the fish on Fridays.\n",
    "parking.md": "# Parking\n\nVisitors park in bay C. Staff badges open the garage gate "
                  "before 7 am.\n",
}


def _app(runtime: Runtime) -> FastAPI:
    app = create_app(runtime.settings, runtime=runtime)
    app.state.runtime = runtime  # served without the lifespan: the session's backends are open
    return app


def test_the_page_and_its_assets_load_without_a_key_but_nothing_else_does(
    retrieval_runtime: Runtime
) -> None:
    assert retrieval_runtime.settings.server.auth
    with TestClient(create_app(retrieval_runtime.settings, runtime=retrieval_runtime)) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert c.get("/static/app.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/static/app.css").headers["content-type"].startswith("text/css")
        assert c.get("/static/library.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/static/index.html").status_code == 404
        assert c.get("/static/..%2Fapp.py").status_code == 404
        assert c.get("/v1/collections").status_code == 401
        script = c.get("/static/app.js").text
    # Nothing secret and nothing from elsewhere in the page's source.
    for source in (page.text, script):
        assert "http://" not in source and "https://" not in source and "vk-" not in source


COUNT_UPDATES = """() => {
  window.answerUpdates = 0;
  new MutationObserver(() => { window.answerUpdates += 1; })
    .observe(document.getElementById('answer'), {childList: true, characterData: true, subtree: true});
}"""

LOAD_COST = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const assets = performance.getEntriesByType('resource')
    .filter((r) => r.name.includes('/static/'));
  return {bytes: nav.transferSize + assets.reduce((n, r) => n + r.transferSize, 0),
          load_ms: nav.loadEventEnd - nav.startTime, assets: assets.length};
}"""


def _publish(folder: Path, names: list[str]) -> None:
    """Copy screenshots to the README's folder when TEST_SCREENSHOTS_DIR names it."""
    if os.environ.get("TEST_SCREENSHOTS_DIR"):
        for name in names:
            (Path(os.environ["TEST_SCREENSHOTS_DIR"]) / name).write_bytes((folder / name).read_bytes())


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _ask(page: Any, question: str) -> None:
    page.get_by_label("Your question").fill(question)
    page.get_by_role("button", name="Ask").click()


def test_ask_stream_verify_and_stop_in_a_real_browser(
    runtime: Runtime, collection: str, browser_page: Any, tmp_path: Path
) -> None:
    ingest_texts(runtime, collection, CORPUS)
    page = browser_page
    with serve_app(_app(runtime)) as url:
        page.goto(url + "/")
        cost = page.evaluate(LOAD_COST)
        page.get_by_label("Collection", exact=True).select_option(collection)
        # The key stays in this tab's sessionStorage, never in localStorage.
        page.get_by_label("API key").fill("vk-test-not-needed-in-dev")
        page.get_by_role("button", name="Use key").click()
        assert page.evaluate("sessionStorage.getItem('verity.apiKey')") == "vk-test-not-needed-in-dev"
        assert page.evaluate("localStorage.length") == 0

        page.evaluate(COUNT_UPDATES)
        _ask(page, "Who waters the office plants?")
        expect(page.locator("#status")).to_have_text("Done.", timeout=120_000)
        # Tokens arrived one by one before the final, cited answer replaced them.
        assert page.evaluate("window.answerUpdates") > 2
        assert page.locator("#answer").get_attribute("aria-live") == "polite"
        assert page.locator("#banner").is_hidden()

        cite = page.locator("#answer .cite").first
        cite.focus()
        assert page.locator("#tip").is_visible() and ".md" in page.locator("#tip").inner_text()
        cite.click()
        panel = page.locator("#panel")
        assert panel.is_visible() and ".md" in page.locator("#panel-meta").inner_text()
        assert page.locator("#panel-text mark").inner_text().strip()
        # The passage in its document: fetched with the tenant's ACL, the cited chunk marked.
        expect(page.locator("#panel-context .chunk.cited")).to_have_count(1)
        page.locator("#trace summary").click()
        assert "Timings" in page.locator("#trace-body").inner_text()
        page.screenshot(path=str(tmp_path / "ask-desktop.png"), full_page=True)
        page.keyboard.press("Escape")
        assert panel.is_hidden()

        page.set_viewport_size({"width": 390, "height": 844})
        cite.click()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(tmp_path / "ask-narrow.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.keyboard.press("Escape")

        _ask(page, "Describe in detail everything the documents say about the office.")
        expect(page.locator("#answer")).not_to_be_empty(timeout=120_000)
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#status")).to_contain_text("Stopped")
        assert page.get_by_role("button", name="Ask").is_enabled()
    _publish(tmp_path, ["ask-desktop.png", "ask-narrow.png"])
    (tmp_path / "load.json").write_text(json.dumps(cost))
    print("web ui first load:", json.dumps(cost))
    assert cost["assets"] == 3 and cost["bytes"] < 60_000


def test_keys_abstentions_and_a_missing_model_are_said_plainly(
    retrieval_runtime: Runtime, collection: str, browser_page: Any
) -> None:
    # Auth is on and there is no model server: the page needs a key, and says what it lacks.
    from verity.backends.stores.api_keys import ApiKeys

    ingest_texts(retrieval_runtime, collection, CORPUS)
    key = ApiKeys(retrieval_runtime.db).create(tenant=retrieval_runtime.store.tenant)[0]
    page = browser_page
    with serve_app(_app(retrieval_runtime)) as url:
        page.goto(url + "/")
        expect(page.locator("#status")).to_contain_text("Enter an API key")
        page.get_by_label("API key").fill(key)
        page.keyboard.press("Enter")
        page.get_by_label("Collection", exact=True).select_option(collection)
        assert key not in page.content()

        _ask(page, "Who waters the office plants?")
        banner = page.locator("#banner")
        expect(banner).to_have_class("banner unavailable")
        expect(banner).to_contain_text("The model is unavailable")

        _ask(page, "What is the boiling point of liquid nitrogen at sea level?")
        expect(banner).to_have_class("banner abstained")
        expect(banner).to_contain_text("Not in the documents")


def test_follow_up_feedback_and_an_accessibility_scan_in_a_real_browser(
    runtime: Runtime, collection: str, browser_page: Any, tmp_path: Path, data_dir: Path
) -> None:
    from typer.testing import CliRunner

    from eval.qa_datasets import load_qa
    from tests.integration.conftest import axe_violations
    from verity.cli.main import app as cli

    ingest_texts(runtime, collection, CORPUS)
    page = browser_page
    with serve_app(_app(runtime)) as url:
        page.goto(url + "/")
        page.get_by_label("Collection", exact=True).select_option(collection)
        _ask(page, "Who waters the office plants?")
        expect(page.locator("#status")).to_have_text("Done.", timeout=120_000)
        expect(page.locator("#turns li")).to_have_count(1)

        # "he" only makes sense with the first question: the trace shows the rewrite.
        _ask(page, "What else does he do?")
        expect(page.locator("#status")).to_have_text("Done.", timeout=120_000)
        page.locator("#trace summary").click()
        expect(page.locator("#asked-as")).to_contain_text("Sam")
        standalone = page.locator("#asked-as").inner_text()

        page.get_by_role("button", name="No, report a problem").click()
        page.get_by_label("What was wrong?").select_option("incomplete")
        page.get_by_label("The correct answer (optional)").fill("Sam feeds the fish on Fridays.")
        page.get_by_label("Comment (optional)").fill("It should say when.")
        violations = axe_violations(page)
        page.get_by_role("button", name="Send feedback").click()
        expect(page.locator("#fb-status")).to_contain_text("saved")
        page.screenshot(path=str(tmp_path / "follow-up.png"), full_page=True)
        _publish(tmp_path, ["follow-up.png"])
        page.get_by_role("button", name="Documents").click()
        violations += axe_violations(page)
    assert violations == [], violations

    out = tmp_path / "feedback.jsonl"
    result = CliRunner().invoke(cli, ["feedback", "export", "--collection", collection, "--out",
                                      str(out)], env={"VERITY_DATA_DIR": str(data_dir),
                                                      "HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    examples = load_qa(out).examples
    assert [(e.question, e.answers) for e in examples] == [
        (standalone, ("Sam feeds the fish on Fridays.",))]
