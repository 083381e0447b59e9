"""A PDF citation in a real browser: the cited page itself, drawn by pdf.js, the passage
highlighted on it.

The system's Chromium, driven by Playwright, uploads a three-page PDF through the page; a
real ``IngestWorker`` ingests it; the question is answered by the local llama.cpp server.
pdf.js comes from this server (``service/web/vendor/pdfjs``) and nothing leaves the host.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import drained_worker, make_pdf, serve_app
from tests.integration.conftest import axe_violations
from verity.answering.runtime import Runtime

pytestmark = pytest.mark.integration

HANDBOOK = make_pdf(["Contents. This handbook covers the offices of Harbour Street.",
                     "In a fire alarm, staff gather at the assembly point in the north car park.",
                     "Index of rooms and floors."])

# How many pixels of the page differ from white, and the boxes the test compares.
INK = """() => {
  const canvas = document.querySelector('#panel-page canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] < 200) ink += 1;
  return ink;
}"""

OVERLAP = """(needle) => {
  const boxes = (sel) => [...document.querySelectorAll(sel)].map((n) => [n, n.getBoundingClientRect()]);
  const text = boxes('#panel-page .pdf-text').filter(([n]) => n.textContent.includes(needle));
  const marks = boxes('#panel-page .pdf-highlight');
  const overlaps = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  return {text: text.length, marks: marks.length,
          overlapping: marks.filter(([, m]) => text.some(([, t]) => overlaps(m, t))).length};
}"""


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_pdfjs_is_served_from_its_folder_and_nothing_else_there_is(
    retrieval_runtime: Runtime
) -> None:
    app = create_app(retrieval_runtime.settings, runtime=retrieval_runtime)
    with TestClient(app) as c:
        policy = c.get("/").headers["content-security-policy"]
        assert "worker-src 'self'" in policy and "default-src 'none'" in policy
        for name in ("pdfpage.mjs", "vendor/pdfjs/pdf.min.mjs", "vendor/pdfjs/pdf.worker.min.mjs"):
            r = c.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
            assert r.headers["x-content-type-options"] == "nosniff"
        assert b"getDocument" in c.get("/static/vendor/pdfjs/pdf.min.mjs").content
        for name in ("vendor/pdfjs/LICENSE", "vendor/pdfjs/", "vendor/pdfjs/pdf.mjs",
                     "vendor/pdfjs/..%2F..%2Fapp.js", "vendor/pdfjs/../../routes/web.py",
                     "..%2Froutes%2Fweb.py", "%2Fetc%2Fpasswd"):
            assert c.get(f"/static/{name}").status_code == 404, name
        page = c.get("/").text
    # Loaded on demand only: the first page load names none of them.
    assert "pdfjs" not in page and "pdfpage" not in page


def _cite_on_page(page: Any, number: int) -> Any:
    """The first citation of the answer whose source is on page ``number`` (its tooltip says)."""
    cites = page.locator("#answer .cite")
    for i in range(cites.count()):
        cites.nth(i).focus()
        if f"page {number}" in page.locator("#tip").inner_text():
            return cites.nth(i)
    raise AssertionError(f"no citation of page {number}: {page.locator('#answer').inner_text()}")


def test_a_pdf_citation_shows_its_page_with_the_passage_highlighted(
    runtime: Runtime, browser_page: Any, tmp_path: Path
) -> None:
    collection = f"pdf-{uuid.uuid4().hex[:8]}"
    worker = drained_worker(runtime)
    app = create_app(runtime.settings, runtime=runtime)
    app.state.runtime = runtime
    page = browser_page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    with serve_app(app) as url, worker.running():
        page.goto(url + "/")
        page.get_by_role("button", name="Documents").click()
        page.get_by_label("New collection").fill(collection)
        page.get_by_role("button", name="Create").click()
        expect(page.locator("#library-status")).to_contain_text(f"Created {collection}")
        page.set_input_files("#pick-files", files=[
            {"name": "handbook.pdf", "mimeType": "application/pdf", "buffer": HANDBOOK}])
        expect(page.locator("#jobs .job .file .pill").first).to_have_text("Indexed",
                                                                          timeout=120_000)
        assert not any("/vendor/pdfjs/" in r for r in requests), "pdf.js loaded before it was needed"

        page.get_by_role("button", name="Questions").click()
        page.get_by_label("Your question").fill("Where do staff gather in a fire alarm?")
        page.get_by_role("button", name="Ask").click()
        expect(page.locator("#status")).to_have_text("Done.", timeout=180_000)
        _cite_on_page(page, 2).click()

        shown = page.locator("#panel-page")
        expect(shown).to_have_attribute("data-page", "2", timeout=60_000)
        canvas = shown.locator("canvas")
        assert canvas.get_attribute("aria-label").startswith("handbook.pdf, page 2 of 3")
        assert page.evaluate(INK) > 200, "the page was drawn blank"
        found = page.evaluate(OVERLAP, "assembly point")
        assert found["text"] >= 1 and found["overlapping"] >= 1, found
        # The text view stays beside the page.
        expect(page.locator("#panel-context .chunk.cited")).to_have_count(1)
        assert axe_violations(page) == []
        page.screenshot(path=str(tmp_path / "pdf-citation.png"), full_page=True)
    assert any(r.endswith("/static/vendor/pdfjs/pdf.worker.min.mjs") for r in requests)
    assert all(r.startswith(url) for r in requests), [r for r in requests if not r.startswith(url)]
    assert [e for e in errors if "Content Security Policy" in e] == []
    # The README's picture: TEST_SCREENSHOTS_DIR=docs/screenshots refreshes it.
    if os.environ.get("TEST_SCREENSHOTS_DIR"):
        target = Path(os.environ["TEST_SCREENSHOTS_DIR"]) / "pdf-citation.png"
        target.write_bytes((tmp_path / "pdf-citation.png").read_bytes())
