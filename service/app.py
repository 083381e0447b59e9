"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import ExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from core.jobs import JobQueue
from core.runtime import Runtime, open_runtime
from core.settings import Settings
from service.errors import install_error_handlers
from service.limits import BodySizeLimit, RateLimiter
from service.metrics import Metrics
from service.routes import collections, documents, metrics, openai_compat, query
from service.telemetry import RequestTelemetry, instrument_otel


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the app.

    Args:
        settings: the configuration.
        runtime: backends opened by the caller (tests, ``verity serve``); when
            None, the lifespan opens them from ``settings`` and closes them on
            shutdown.

    Returns:
        The app, with its own metrics registry in ``app.state.metrics``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            if runtime is None:
                opened = await run_in_threadpool(stack.enter_context, open_runtime(settings))
                app.state.runtime = opened
            else:
                app.state.runtime = runtime
            await run_in_threadpool(app.state.runtime.embedder.warm_up)
            if app.state.runtime.reranker is not None:
                await run_in_threadpool(app.state.runtime.reranker.warm_up)
            yield

    app = FastAPI(
        title="Verity",
        version="0.1.0",
        summary="Grounded, cited answers from your documents.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    def job_counts() -> Mapping[str, int]:
        return JobQueue(app.state.runtime.db).counts()

    app.state.metrics = Metrics(job_counts=job_counts)
    app.state.rate_limiter = RateLimiter(per_minute=settings.server.rate_limit_per_minute)
    for router in (query.router, openai_compat.router, documents.router, collections.router):
        app.include_router(router)
    if settings.server.metrics:
        app.include_router(metrics.router)
    app.add_middleware(BodySizeLimit, max_bytes=int(settings.server.max_body_mb * 1e6),  # type: ignore[arg-type]
                       upload_bytes=int(settings.server.max_upload_mb * 1e6))
    # Added last, so outermost: it also sees requests the size limit refuses.
    app.add_middleware(RequestTelemetry, metrics=app.state.metrics)  # type: ignore[arg-type]
    if settings.server.otel:
        instrument_otel(app)
    return app
