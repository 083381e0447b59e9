"""The web page's document library in a real browser (the system's Chromium, via Playwright).

Files go through the real upload API into the job queue; a real ``IngestWorker`` ingests
them over the embedded Postgres and the bundled embedder.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from tests.helpers import drained_worker, make_pdf, serve_app
from tests.integration.conftest import axe_violations
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys

pytestmark = pytest.mark.integration

HANDBOOK = b"# Handbook\n\n## Holidays\n\nStaff take 28 days of paid holiday a year.\n"
PDF = make_pdf(["Fire drills happen on the first Monday of each quarter.",
                "The assembly point is the north car park."])

DROP = """(files) => {
  const data = new DataTransfer();
  for (const [name, text] of files) data.items.add(new File([text], name));
  document.getElementById('drop').dispatchEvent(
    new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
}"""


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _pick(page: Any, files: dict[str, tuple[str, bytes]]) -> None:
    page.set_input_files("#pick-files", files=[
        {"name": name, "mimeType": mime, "buffer": data} for name, (mime, data) in files.items()])


def test_upload_follow_cancel_retry_delete_and_reindex_in_a_real_browser(
    retrieval_runtime: Runtime, browser_page: Any, tmp_path: Path
) -> None:
    runtime = retrieval_runtime
    collection = f"library-{uuid.uuid4().hex[:8]}"
    key = ApiKeys(runtime.db).create(tenant=runtime.store.tenant, is_admin=True)[0]
    worker = drained_worker(runtime)
    app = create_app(runtime.settings, runtime=runtime)
    app.state.runtime = runtime
    page = browser_page
    page.on("dialog", lambda dialog: dialog.accept())
    with serve_app(app) as url:
        page.goto(url + "/")
        page.get_by_label("API key").fill(key)
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Documents").click()
        expect(page.locator("#library-view")).to_be_visible()
        assert page.locator("#ask-view").is_hidden()
        page.get_by_label("New collection").fill(collection)
        page.get_by_role("button", name="Create").click()
        expect(page.locator("#library-status")).to_have_text(f"Created {collection}: drop files to fill it.")
        assert page.get_by_label("Collection", exact=True).input_value() == collection
        expect(page.locator("#docs")).to_contain_text("No documents yet")

        # No worker yet: the upload waits in the queue, and Cancel stops it.
        _pick(page, {"handbook.md": ("text/markdown", HANDBOOK)})
        job = page.locator("#jobs .job").first
        expect(job.locator(".file")).to_contain_text("Queued")
        job.get_by_role("button", name="Cancel").click()
        expect(job.locator(".job-head .pill")).to_have_text("cancelled")
        expect(job.locator(".file")).to_contain_text("Cancelled")

        with worker.running():
            _pick(page, {"handbook.md": ("text/markdown", HANDBOOK),
                         "drills.pdf": ("application/pdf", PDF)})
            expect(job.locator(".job-head .pill")).to_have_text("done", timeout=60_000)
            expect(job.locator(".file .pill")).to_have_text(["Indexed", "Indexed"])
            assert "2 of 2 files" in job.locator(".job-head").inner_text()
            expect(page.locator("#docs tr")).to_have_count(2)

            # A dropped file that cannot be read fails with a reason, and Retry sends it again.
            page.evaluate(DROP, [["broken.pdf", "%PDF-1.4 not really a pdf"]])
            expect(job.locator(".job-head .pill")).to_have_text("failed", timeout=60_000)
            expect(job.locator(".file.failed .reason")).not_to_be_empty()
            jobs_before = page.locator("#jobs .job").count()
            job.get_by_role("button", name="Retry broken.pdf").click()
            expect(page.locator("#jobs .job")).to_have_count(jobs_before + 1)
            expect(job.locator(".job-head .pill")).to_have_text("failed", timeout=60_000)

        page.get_by_label("Filter").fill("drills")
        expect(page.locator("#docs tr")).to_have_count(1)
        assert axe_violations(page) == []
        page.screenshot(path=str(tmp_path / "library-desktop.png"), full_page=True)
        page.get_by_label("Filter").fill("")
        page.get_by_role("button", name="Delete handbook.md").click()
        expect(page.locator("#library-status")).to_have_text("Deleted handbook.md.")
        expect(page.locator("#docs tr")).to_have_count(1)
        page.get_by_role("button", name="Re-index").click()
        expect(page.locator("#library-status")).to_contain_text(f"Re-indexed {collection}")

        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(tmp_path / "library-narrow.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})

        # Keys: an admin creates one (shown once) and revokes it.
        page.get_by_role("button", name="Keys").click()
        page.get_by_label("Name").fill("hr app")
        page.get_by_label("Groups").fill("hr, finance")
        page.get_by_role("button", name="New key").click()
        new_key = page.locator("#new-key").inner_text()
        row = page.locator("#keys tr", has_text="hr app")
        expect(row).to_contain_text("hr, finance")
        assert new_key.startswith(row.locator("code").inner_text().rstrip("…"))
        assert ApiKeys(runtime.db).authenticate(new_key) is not None
        assert axe_violations(page) == []
        row.get_by_role("button", name="Revoke hr app").click()
        expect(row).to_contain_text("revoked")
        assert ApiKeys(runtime.db).authenticate(new_key) is None
    sources = [d.source for d in runtime.store.list_documents(collection=collection, limit=10,
                                                              offset=0)[0]]
    assert sources == ["drills.pdf"]
    # The README's pictures: TEST_SCREENSHOTS_DIR=docs/screenshots refreshes them.
    if os.environ.get("TEST_SCREENSHOTS_DIR"):
        target = Path(os.environ["TEST_SCREENSHOTS_DIR"])
        for name, shot in [("library.png", "library-desktop.png"),
                           ("library-narrow.png", "library-narrow.png")]:
            (target / name).write_bytes((tmp_path / shot).read_bytes())


def test_a_documents_chunks_expand_and_a_collection_is_re_embedded_in_a_real_browser(
    retrieval_runtime: Runtime, browser_page: Any, data_dir: Path
) -> None:
    from ingest.pipeline import IngestPipeline
    from verity.backends.onnx_embedder import OnnxEmbedder
    from verity.core.settings import ChunkingSettings, EmbedderSettings
    from verity.core.types import Document, Section

    runtime = retrieval_runtime
    collection = f"chunks-{uuid.uuid4().hex[:8]}"
    key = ApiKeys(runtime.db).create(tenant=runtime.store.tenant, is_admin=True)[0]
    # float32 vectors, so that the server's int8 embedder has something to re-embed
    float32 = OnnxEmbedder(EmbedderSettings(precision="float32"), data_dir=data_dir)
    paragraphs = "\n\n".join(f"Rule {i}: the office on floor {i} opens at {i % 12 + 1} o'clock, "
                             f"and its kitchen is cleaned on day {i} of every month. " * 6
                             for i in range(12))
    doc = Document(source="rules.md", title="House rules",
                   sections=(Section(paragraphs, heading="House rules > Offices"),),
                   content_hash="rules-1")
    report = IngestPipeline(store=runtime.store, embedder=float32,
                            chunking=ChunkingSettings(chunk_tokens=64, overlap_tokens=8)
                            ).ingest_documents([doc], collection=collection)
    assert report.ok and report.chunks_written > 20, report
    chunks = report.chunks_written
    worker = drained_worker(runtime)
    app = create_app(runtime.settings, runtime=runtime)
    app.state.runtime = runtime
    page = browser_page
    with serve_app(app) as url:
        page.goto(url + "/")
        page.get_by_label("API key").fill(key)
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Documents").click()
        page.get_by_label("Collection", exact=True).select_option(collection)
        expect(page.locator("#docs tr[data-doc]")).to_have_count(1)
        expect(page.locator("#collection-vectors")).to_have_text("Vectors: float32 (onnx).")

        # The row expands to its first 20 chunks, then the rest, and collapses by keyboard.
        toggle = page.get_by_role("button", name="Show the chunks of rules.md")
        toggle.click()
        preview = page.get_by_role("list", name="Chunks of rules.md")
        expect(preview.locator("li.chunk")).to_have_count(20)
        expect(preview.locator("li.chunk").first).to_contain_text("#1 · House rules > Offices · ")
        expect(preview.locator("li.chunk").first).to_contain_text("Rule 0: the office")
        expect(page.get_by_role("button", name="Hide the chunks of rules.md")).to_have_attribute(
            "aria-expanded", "true")
        page.get_by_role("button", name="Show more chunks").click()
        expect(preview.locator("li.chunk")).to_have_count(chunks)
        expect(page.get_by_role("button", name="Show more chunks")).to_be_hidden()
        assert axe_violations(page) == []
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.set_viewport_size({"width": 1280, "height": 900})
        hide = page.get_by_role("button", name="Hide the chunks of rules.md")
        hide.focus()
        page.keyboard.press("Enter")
        expect(preview).to_have_count(0)
        expect(toggle).to_have_attribute("aria-expanded", "false")

        # Re-index with re-embed: a job with progress in chunks, done by the worker.
        page.get_by_role("checkbox", name="re-embed").check()
        page.get_by_role("button", name="Re-index").click()
        expect(page.locator("#library-status")).to_contain_text(f"Re-embedding {collection}")
        job = page.locator('#jobs .job[data-kind="reembed"]').first
        expect(job.get_by_role("progressbar")).to_have_attribute("max", str(chunks))
        with worker.running():
            expect(job.locator(".job-head .pill")).to_have_text("done", timeout=60_000)
        expect(job.locator(".job-head")).to_contain_text(f"{chunks} of {chunks} chunks")
        expect(page.locator("#collection-vectors")).to_have_text("Vectors: int8 (onnx).")
    [stats] = [s for s in runtime.store.stats() if s.name == collection]
    assert (stats.embed_backend, stats.embed_precision) == ("onnx", "int8")
