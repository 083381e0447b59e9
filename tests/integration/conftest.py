"""Fixtures shared by the integration tests: a browser, and a database a test may stop."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from verity.backends.stores.database import Database
from verity.core.settings import StoreSettings

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browser_page() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("TEST_BROWSER_REQUIRED") == "1":
            pytest.fail("TEST_BROWSER_REQUIRED=1 but /usr/bin/chromium is missing: "
                        "install it with apt-get install chromium")
        pytest.skip("/usr/bin/chromium is missing (make test installs it with apt-get on Debian)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"],
                                    headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def own_database(tmp_path: Path) -> Iterator[Database]:
    """An embedded server of this test's own, which it may stop without hurting other tests."""
    db = Database(StoreSettings(pool_timeout_s=2.0, connect_timeout_s=2.0),
                  data_dir=tmp_path).open()
    yield db
    db.close()


AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING_IMPACTS = ("serious", "critical")


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical WCAG 2.x A/AA violations on the page as it is now.

    axe is loaded from the vendored file by the test runner (the page's content security
    policy admits only the page's own scripts, and the script is evaluated, not added).
    """
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    result: dict[str, Any] = page.evaluate("""async () => await axe.run(document, {
        runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})""")
    assert len(result["passes"]) > 10, "axe checked next to nothing: did the page load?"
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v["impact"] in BLOCKING_IMPACTS]
