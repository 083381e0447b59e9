"""Saved evaluation reports: list them, read one's HTML page, compare two (admin keys).

Reports are the server's, not a tenant's: a run may have measured any tenant's
collections, so only admin keys (and ``--dev``) see them, and a deployment that
hosts tenants who must not see each other's numbers turns them off
(``VERITY_EVAL__SERVE_REPORTS=false``).

Pages are sent with a sandboxing content security policy: a page that carried a
script could not run it, nor read the API key the web page keeps, nor call the API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from service.deps import AdminDep
from service.protocol import ERROR_DESCRIPTIONS, error_responses
from service.reports_protocol import REPORT_NAME_PATTERN, ReportList, ReportModel
from verity.core.errors import NotFoundError
from verity.core.reports import ReportArchive

router = APIRouter(tags=["evaluation"])

_CODES = (400, 401, 403, 404, 422, 429)
_ERRORS = error_responses(*_CODES)
# A route whose responses are HTML would document its errors as HTML too: they are JSON.
_HTML: dict[int | str, dict[str, Any]] = {
    code: {"description": ERROR_DESCRIPTIONS[code], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}} for code in _CODES}
_HTML[200] = {"description": "a self-contained HTML page",
              "content": {"text/html": {"schema": {"type": "string"}}}}
# No script, no request anywhere, an opaque origin; inline styles and embedded plots only.
PAGE_POLICY = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "private, no-store"}
NameParam = Annotated[str, Path(max_length=520, pattern=REPORT_NAME_PATTERN,
                                description="a name from GET /v1/eval/reports")]
NameQuery = Annotated[str, Query(max_length=520, pattern=REPORT_NAME_PATTERN,
                                 description="a name from GET /v1/eval/reports")]


def _archive(request: Request) -> ReportArchive:
    archive: ReportArchive | None = request.app.state.reports
    if archive is None:
        raise NotFoundError("this server does not serve evaluation reports (verity serve does, "
                            "from VERITY_EVAL__REPORTS_DIR, unless VERITY_EVAL__SERVE_REPORTS=false)")
    return archive


@router.get("/v1/eval/reports", response_model=ReportList, responses=_ERRORS)
def list_reports(request: Request, principal: AdminDep) -> ReportList:
    """The saved `verity eval` reports, newest first, with headline numbers (admin keys)."""
    return ReportList(reports=[ReportModel.of(r) for r in _archive(request).list_reports()])


@router.get("/v1/eval/reports/{name:path}", response_class=HTMLResponse, responses=_HTML)
def report_page(name: NameParam, request: Request, principal: AdminDep) -> HTMLResponse:
    """One report's HTML page: summary and differences first, provenance after (admin keys)."""
    return HTMLResponse(_archive(request).report_html(name), headers=PAGE_HEADERS)


@router.get("/v1/eval/compare", response_class=HTMLResponse, responses=_HTML)
def compare_reports(a: NameQuery, b: NameQuery, request: Request,
                    principal: AdminDep) -> HTMLResponse:
    """What changed from report A to report B (paired bootstrap per metric), as an HTML page
    that leads with the differences (admin keys)."""
    return HTMLResponse(_archive(request).compare_html(a, b), headers=PAGE_HEADERS)
