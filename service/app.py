"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from core.runtime import Runtime, open_runtime
from core.settings import Settings
from service.errors import install_error_handlers
from service.routes import query


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the app.

    Args:
        settings: the configuration.
        runtime: backends opened by the caller (tests, ``verity serve``); when
            None, the lifespan opens them from ``settings`` and closes them on
            shutdown.
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
    app.include_router(query.router)
    return app
