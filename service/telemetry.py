"""Per-request telemetry: a request id, one access log line and the request metrics.

:class:`RequestTelemetry` is the outermost middleware: it sees every request,
including those refused by the size limit and those that fail unexpectedly,
which it answers itself in the one error schema so the response still carries
``X-Request-ID``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders

from service.errors import send_error
from service.limits import ASGIApp, Message, Receive, Scope, Send
from service.metrics import Metrics
from verity.core.logs import request_id

log = logging.getLogger(__name__)
access_log = logging.getLogger("verity.access")

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestTelemetry:
    """ASGI middleware: request id in and out, an access log line and metrics per request.

    An incoming ``X-Request-ID`` of 1-128 letters, digits and ``._:-`` is kept;
    otherwise a new id is made. The id is returned in the ``X-Request-ID``
    response header and set in :data:`verity.core.logs.request_id` while the request
    is served.

    Example:
        >>> app.add_middleware(RequestTelemetry, metrics=Metrics())
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = int(message["status"]), True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error")
            if responded:
                raise
            await send_error(send, status=500, kind="internal_error",
                             message=f"internal error; see the server log (request id {rid})",
                             headers={REQUEST_ID_HEADER: rid})
        finally:
            self._record(scope, status=status, seconds=time.perf_counter() - started, rid=rid)
            request_id.reset(token)

    def _record(self, scope: Scope, *, status: int, seconds: float, rid: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        if self.metrics is not None:
            self.metrics.observe_request(method=scope["method"], route=template, status=status,
                                         seconds=seconds)
        path = _printable(scope.get("path", ""))
        ms = round(seconds * 1000, 2)
        tenant = scope.get("state", {}).get("tenant")
        access_log.info("%s %s %d %.1fms tenant=%s id=%s", scope["method"], path, status, ms,
                        tenant or "-", rid,
                        extra={"request_id": rid, "method": scope["method"], "path": path,
                               "route": template, "status": status, "ms": ms, "tenant": tenant})


def incoming_request_id(scope: Scope) -> str | None:
    """The client's ``X-Request-ID`` if it is a safe token, else None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"x-request-id":
            text = value.decode("latin-1")
            return text if _VALID_ID.fullmatch(text) else None
    return None


def instrument_otel(app: FastAPI) -> bool:
    """Trace requests with OpenTelemetry if ``opentelemetry-instrumentation-fastapi`` is installed.

    Spans go to the global tracer provider. If nothing set one up (such as the
    ``opentelemetry-instrument`` launcher) and ``opentelemetry-sdk`` with an OTLP
    exporter is installed, one exporting over OTLP is set up here; the SDK reads
    the standard ``OTEL_*`` variables (endpoint, service name).

    Returns:
        Whether the app is instrumented.
    """
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        log.warning("VERITY_SERVER__OTEL is on but opentelemetry-instrumentation-fastapi is not "
                    "installed: pip install opentelemetry-instrumentation-fastapi; tracing is off")
        return False
    configure_tracer_provider()
    FastAPIInstrumentor.instrument_app(app)
    return True


def configure_tracer_provider() -> bool:
    """Install an SDK tracer provider exporting over OTLP, unless one is set already.

    Returns:
        Whether a provider was installed here.
    """
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False  # configured by the launcher or the host application
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OpenTelemetry spans are not exported: pip install opentelemetry-sdk "
                    "opentelemetry-exporter-otlp-proto-http, or run under opentelemetry-instrument")
        return False
    exporter = _otlp_exporter()
    if exporter is None:
        log.warning("OpenTelemetry spans are not exported: pip install "
                    "opentelemetry-exporter-otlp-proto-http (or -grpc)")
        return False
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def _otlp_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            return None
    return OTLPSpanExporter()


def _printable(text: str, limit: int = 512) -> str:
    """``text`` with control characters escaped, so a path cannot forge log lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
