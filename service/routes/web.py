"""The web page at ``/``: ask a question, watch the answer stream in, check its citations.

The page and its assets need no API key; the API calls the page makes carry the key
the user entered. Only the named assets are served, so no path reaches other files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from verity.core.errors import NotFoundError

router = APIRouter(include_in_schema=False)

WEB = Path(__file__).resolve().parent.parent / "web"
ASSETS = {"app.js": "text/javascript", "library.js": "text/javascript", "app.css": "text/css",
          "evals.js": "text/javascript", "evals.css": "text/css"}
# Everything comes from this server; nothing inline, nothing from elsewhere. data: images are
# the plots embedded in evaluation reports.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@router.get("/")
def index() -> FileResponse:
    """The page."""
    return FileResponse(WEB / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache"})


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    """One of the page's scripts or style sheets.

    Raises:
        NotFoundError: not one of the page's assets (404).
    """
    if name not in ASSETS:
        raise NotFoundError("no such asset; the web page is at /")
    return FileResponse(WEB / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
