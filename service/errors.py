"""One error schema for every failure: ``{"error": {"type", "message"}}``.

Messages of our own errors are written for users and never carry the text of
the exception underneath; that text is logged with the request id when a
backend fails (5xx). Anything unexpected is logged with its traceback and the
client gets a generic message.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from verity.core.errors import (
    AuthError,
    BusyError,
    CancelledError,
    ConfigError,
    ConflictError,
    EmbedderError,
    ForbiddenError,
    GenerationError,
    LoaderError,
    NotFoundError,
    RagError,
    RateLimitError,
    RerankError,
    StoreError,
)
from verity.core.logs import request_id

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[RagError], int, str]] = [
    (AuthError, 401, "unauthorized"),
    (ForbiddenError, 403, "forbidden"),
    (RateLimitError, 429, "rate_limited"),
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (ConfigError, 400, "invalid_request"),
    (LoaderError, 422, "unreadable_document"),
    (StoreError, 503, "store_unavailable"),
    (EmbedderError, 503, "embedder_unavailable"),
    (BusyError, 503, "model_busy"),
    (CancelledError, 499, "cancelled"),
    (GenerationError, 503, "generation_unavailable"),
    (RerankError, 503, "rerank_unavailable"),
]

# A database outage is usually a restart or a burst of requests: clients may retry soon.
STORE_RETRY_AFTER_S = 5

_HTTP_KINDS = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large"}


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API serves at this path, from its OpenAPI schema.

    Starlette names only the first matching route's methods, which is wrong
    where GET and POST of one path are separate routes.
    """
    methods: set[str] = set()
    for path, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(path)[0].match(request.url.path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


def error_response(status: int, kind: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"type": kind, "message": message}},
                        headers=headers)


async def send_error(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], *, status: int,
                     kind: str, message: str, headers: dict[str, str] | None = None) -> None:
    """Send an error response in the one schema straight through ASGI (for middleware)."""
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})



def _headers(exc: RagError) -> dict[str, str] | None:
    if isinstance(exc, RateLimitError | BusyError):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if isinstance(exc, AuthError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, StoreError):
        return {"Retry-After": str(STORE_RETRY_AFTER_S)}
    return None


def error_kind(exc: RagError) -> tuple[int, str]:
    """The HTTP status and error type of one of our errors; 500 ``internal_error`` if unmapped."""
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal_error"


def public_error(exc: BaseException) -> tuple[int, str, str]:
    """The status, error type and message a client may see for ``exc``.

    A backend failure (5xx) is logged with the request id and the chain of
    exceptions underneath, which the client never sees.

    Returns:
        ``(status, type, message)``: our own message for our errors, a generic
        one naming the request id for anything else.
    """
    rid = request_id.get() or "-"
    status, kind = error_kind(exc) if isinstance(exc, RagError) else (500, "internal_error")
    if kind != "internal_error":
        if isinstance(exc, BusyError):
            log.info("%s (request id %s): %s", kind, rid, exc)
        elif status >= 500:
            log.warning("%s (request id %s): %s", kind, rid, exc, exc_info=exc)
        return status, kind, str(exc)
    log.error("unhandled error (request id %s)", rid, exc_info=exc)
    return 500, "internal_error", f"internal error; see the server log (request id {rid})"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RagError)
    async def _rag(_: Request, exc: RagError) -> JSONResponse:
        status, kind, message = public_error(exc)
        return error_response(status, kind, message, _headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _HTTP_KINDS.get(exc.status_code, "http_error")
        # Keep the exception's headers: a 405 must say which methods are allowed (RFC 9110).
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, kind, str(exc.detail), headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error; see the server log")
