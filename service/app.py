"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import ExitStack, asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.errors import install_error_handlers
from service.health import HealthListener, Heartbeat
from service.limits import BodySizeLimit, ModelQueue, RateLimiter
from service.metrics import Metrics
from service.openapi_schema import serve_schema
from service.routes import (
    collections,
    documents,
    evaluation,
    feedback,
    keys,
    metrics,
    openai_compat,
    query,
    web,
)
from service.telemetry import RequestTelemetry, instrument_otel
from verity.answering.runtime import Runtime, open_runtime
from verity.backends.stores.jobs import JobQueue
from verity.backends.stores.outbox import Lag
from verity.core.reports import ReportArchive
from verity.core.settings import Settings

log = logging.getLogger(__name__)


def size_thread_pool(settings: Settings) -> None:
    """Give blocking requests ``server.threads`` threads, and say if the store pool is smaller.

    A request thread beyond the pool's size waits for a connection and, past
    ``store.pool_timeout_s``, answers 503 ``store_unavailable``.
    """
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.server.threads
    if settings.store.pool_max_size < settings.server.threads:
        log.warning("store.pool_max_size (%d) is below server.threads (%d): under load requests "
                    "wait for a database connection; raise VERITY_STORE__POOL_MAX_SIZE",
                    settings.store.pool_max_size, settings.server.threads)


def model_queue(settings: Settings) -> ModelQueue:
    """The queue in front of the generator: llama.cpp answers one question at a time."""
    slots = settings.llm.concurrency or (16 if settings.llm.base_url else 1)
    return ModelQueue(slots=slots, depth=settings.llm.queue_depth, wait_s=settings.llm.timeout_s)


def _metrics(app: FastAPI) -> Metrics:
    """The app's metrics, reading the job queue and the indexes' lag when scraped."""

    def job_counts() -> Mapping[str, int]:
        return JobQueue(app.state.runtime.db).counts()

    def lexical_lag() -> Mapping[str, Lag | None]:
        lexical = app.state.runtime.lexical
        return {} if lexical is None else lexical.lag()

    def dense_lag() -> Mapping[str, Lag | None]:
        dense = app.state.runtime.dense
        return {} if dense is None else dense.lag()

    return Metrics(job_counts=job_counts, lexical_lag=lexical_lag, dense_lag=dense_lag)


def _health_listener(host: str, port: int, stack: ExitStack) -> HealthListener:
    """The liveness listener on ``host:port``, watching the running event loop; ``stack``
    stops both when the app stops."""
    heartbeat = Heartbeat()
    beating = asyncio.create_task(heartbeat.beat())
    stack.callback(beating.cancel)
    listener = HealthListener(host, port, idle_s=heartbeat.idle_s)
    listener.start()
    stack.callback(listener.stop)
    return listener


def create_app(settings: Settings, *, runtime: Runtime | None = None,
               reports: ReportArchive | None = None) -> FastAPI:
    """Build the app.

    Args:
        settings: the configuration.
        runtime: backends opened by the caller (tests, ``verity serve``); when
            None, the lifespan opens them from ``settings`` and closes them on
            shutdown.
        reports: saved evaluation reports for ``/v1/eval`` (None: those routes answer 404).

    Returns:
        The app, with its own metrics registry in ``app.state.metrics``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        size_thread_pool(settings)
        with ExitStack() as stack:
            if runtime is None:
                opened = await run_in_threadpool(stack.enter_context, open_runtime(settings))
                app.state.runtime = opened
            else:
                app.state.runtime = runtime
            await run_in_threadpool(app.state.runtime.embedder.warm_up)
            if app.state.runtime.reranker is not None:
                await run_in_threadpool(app.state.runtime.reranker.warm_up)
            if settings.server.health_port is not None:
                app.state.health_listener = _health_listener(
                    settings.server.host, settings.server.health_port, stack)
            yield

    app = FastAPI(
        title="Verity",
        version="0.1.0",
        summary="Grounded, cited answers from your documents.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.state.metrics = _metrics(app)
    app.state.rate_limiter = RateLimiter(per_minute=settings.server.rate_limit_per_minute)
    app.state.model_queue = model_queue(settings)
    app.state.reports = reports
    for router in (query.router, openai_compat.router, documents.router, collections.router,
                   feedback.router, keys.router, evaluation.router, web.router):
        app.include_router(router)
    if settings.server.metrics:
        app.include_router(metrics.router)
    app.add_middleware(BodySizeLimit, max_bytes=int(settings.server.max_body_mb * 1e6),
                       upload_bytes=int(settings.server.max_upload_mb * 1e6))
    # Added last, so outermost: it also sees requests the size limit refuses.
    app.add_middleware(RequestTelemetry, metrics=app.state.metrics)
    if settings.server.otel:
        instrument_otel(app)
    serve_schema(app, embedder_model=settings.embedder.model)
    return app
