"""``verity serve`` (the HTTP API) and ``verity worker`` (ingestion of uploaded files)."""

from __future__ import annotations

import gc
import logging
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from verity.cli.common import (
    LogFormatOpt,
    clean_errors,
    configure_logging,
    fail,
    load_settings,
    log,
)

if TYPE_CHECKING:
    from eval.archive import ReportFolder
    from verity.answering.runtime import Runtime
    from verity.core.settings import Settings


@clean_errors
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    ingest_paths: Annotated[list[Path] | None, typer.Option(
        "--ingest", help="ingest these paths into the default collection first")] = None,
    dev: Annotated[bool, typer.Option(
        "--dev", help="no API keys: every caller is the admin of the default tenant")] = False,
    worker: Annotated[bool, typer.Option(
        help="run an ingestion worker thread for uploads (default: VERITY_SERVER__WORKER)")
    ] = True,
    log_format: LogFormatOpt = None,
) -> None:
    """Run the HTTP API. Starts the embedded Postgres and local model server when needed."""
    import uvicorn

    from service.app import create_app
    from verity.answering.runtime import open_runtime

    settings = load_settings()
    configure_logging(logging.INFO, log_format.value if log_format else settings.log_format)
    settings = _server_settings(settings, host=host, port=port, dev=dev)
    server = settings.server
    _check_port_free(server.host, server.port)
    if server.health_port is not None:
        _check_port_free(server.host, server.health_port, hint="set VERITY_SERVER__HEALTH_PORT")
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; turn that into a
    # normal exit so the worker, the embedded Postgres and the llama.cpp child are stopped below.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with open_runtime(settings) as runtime:
        if runtime.reranker is not None:
            runtime.reranker.warm_up()
        if ingest_paths:
            _ingest_before_serving(runtime, ingest_paths)
        with _worker_thread(runtime, enabled=worker and server.worker):
            log.info("Verity on http://%s:%s (generator: %s; %s)", server.host, server.port,
                     runtime.generator_name,
                     "API keys required" if server.auth else "dev mode: no API keys")
            # What start-up loaded (models, tokenizers, libraries: about 170,000 objects) lives
            # as long as the process; frozen, the collector no longer walks it, which under load
            # held every request for 80 ms or more now and then.
            gc.freeze()
            # log_config=None: uvicorn's own lines go through the handler set up above.
            uvicorn.run(create_app(settings, runtime=runtime, reports=_reports(settings)),
                        host=server.host,
                        port=server.port, timeout_keep_alive=server.keep_alive_s,
                        log_level="info", access_log=False, log_config=None)


def _reports(settings: Settings) -> ReportFolder | None:
    """The saved evaluation reports the service shows admin keys (eval reads them, the CLI
    hands them over: the service never imports eval)."""
    from eval.archive import ReportFolder

    return ReportFolder(settings.reports_dir) if settings.eval.serve_reports else None


def _server_settings(settings: Settings, *, host: str | None, port: int | None,
                     dev: bool) -> Settings:
    """``settings`` with ``--host``, ``--port`` and ``--dev`` (no API keys) applied."""
    server = settings.server.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    if dev:
        server = server.model_copy(update={"auth": False})
    return settings.model_copy(update={"server": server})


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


@contextmanager
def _worker_thread(runtime: Runtime, *, enabled: bool) -> Iterator[None]:
    """An ingestion worker thread for as long as the block runs (the CLI may import ingest)."""
    if not enabled:
        yield
        return
    from ingest.worker import IngestWorker
    from verity.backends.embedders import build_embedder

    settings = runtime.settings
    # Its own embedder: a Hugging Face fast tokenizer must not be shared with request threads.
    embedder = build_embedder(settings.embedder, data_dir=settings.data_dir)
    worker = IngestWorker(db=runtime.db, embedder=embedder, chunking=settings.chunking,
                          settings=settings.worker)
    with worker.running():
        yield


def _ingest_before_serving(runtime: Runtime, paths: list[Path]) -> None:
    # The ingest package is imported here, by the CLI, never by the service.
    from ingest.pipeline import IngestPipeline

    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=runtime.settings.chunking)
    report = pipeline.run(paths, collection=runtime.settings.collection)
    for source, reason in report.failed:
        log.warning("failed: %s: %s", source, reason)
    log.info("%s", report.summary())


@clean_errors
def worker_command(
    once: Annotated[bool, typer.Option("--once", help="run the queued jobs, then exit")] = False,
    log_format: LogFormatOpt = None,
) -> None:
    """Ingest files uploaded through the API (POST /v1/documents), until stopped.

    Any number of workers, on any machines, may share one database. `verity serve`
    runs one as a thread unless started with --no-worker.
    """
    from ingest.worker import IngestWorker
    from verity.answering.runtime import open_runtime

    settings = load_settings()
    configure_logging(logging.INFO, log_format.value if log_format else settings.log_format)
    with open_runtime(settings, generator=False, reranker=False) as runtime:
        worker = IngestWorker(db=runtime.db, embedder=runtime.embedder,
                              chunking=settings.chunking, settings=settings.worker)
        if once:
            log.info("ran %d ingestion jobs", worker.run_pending())
            return
        # SIGTERM and Ctrl-C stop after the current file; an unfinished job is requeued.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        log.info("ingestion worker %s waiting for jobs", worker.name)
        worker.run_forever()


def _check_port_free(host: str, port: int, *,
                     hint: str = "pass --port / set VERITY_SERVER__PORT") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise fail(f"cannot listen on {host}:{port} ({e.strerror}); stop what is using it "
                       f"or {hint}") from None
