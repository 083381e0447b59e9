"""The web page at ``/``: ask a question, watch the answer stream in, check its citations.

The page and its assets need no API key; the API calls the page makes carry the key
the user entered. Only the named assets are served (a fixed table, looked up by the whole
path), so no path reaches other files. pdf.js, vendored under ``web/vendor/pdfjs``, is
loaded by the page only when a PDF citation is opened.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from verity.core.errors import NotFoundError

router = APIRouter(include_in_schema=False)

WEB = Path(__file__).resolve().parent.parent / "web"
JS = "text/javascript"
ASSETS = {
    "app.js": JS, "library.js": JS, "app.css": "text/css",
    # Loaded on first use: the Evaluations view, and the cited page of a PDF, drawn by pdf.js
    # in a module worker.
    "evals.js": JS, "evals.css": "text/css",
    "pdfpage.mjs": JS, "vendor/pdfjs/pdf.min.mjs": JS, "vendor/pdfjs/pdf.worker.min.mjs": JS,
}
# Everything comes from this server; nothing inline, nothing from elsewhere. pdf.js parses
# PDFs in a worker started from its own script on this server; data: images are the plots
# embedded in evaluation reports.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          "img-src 'self' data:; worker-src 'self'; base-uri 'none'; form-action 'self'; "
          "frame-ancestors 'none'")


@router.get("/")
def index() -> FileResponse:
    """The page."""
    return FileResponse(WEB / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache"})


@router.get("/static/{name:path}")
def asset(name: str) -> FileResponse:
    """One of the page's scripts or style sheets.

    Raises:
        NotFoundError: not one of the page's assets (404).
    """
    if name not in ASSETS:
        raise NotFoundError("no such asset; the web page is at /")
    return FileResponse(WEB / name, media_type=ASSETS[name], headers={
        "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
