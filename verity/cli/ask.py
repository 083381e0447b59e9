"""``verity ask`` (one question answered from the documents) and ``verity status``."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from verity.cli.common import (
    CollectionOpt,
    clean_errors,
    collection_or_default,
    configure_logging,
    load_settings,
)

if TYPE_CHECKING:
    from verity.core.types import Answer


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
    from verity.answering.runtime import open_runtime

    configure_logging(logging.WARNING)
    settings = load_settings()
    name = collection_or_default(collection, settings)
    with open_runtime(settings) as runtime:
        rag = runtime.rag()
        if settings.crag.enabled if crag is None else crag:
            from verity.answering.crag import CorrectiveRag

            answer = CorrectiveRag(rag, settings.crag, runtime.connectors).answer(
                question, collection=name, top_k=top_k)
        else:
            answer = rag.answer(question, collection=name, top_k=top_k)
    if as_json:
        typer.echo(json.dumps(asdict(answer), indent=2))
        return
    _print_answer(answer)


def _print_answer(answer: Answer) -> None:
    typer.echo(answer.text)
    listed = answer.citations or answer.sources
    if listed:
        typer.echo("\nSources:" if answer.citations else "\nClosest sources:")
        for c in listed:
            where = f", page {c.page}" if c.page else (f" ({c.heading})" if c.heading else "")
            typer.echo(f"  [{c.n}] {c.document}{where}")


@clean_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Collections, documents, chunks and the models in use."""
    from verity.answering.runtime import open_runtime
    from verity.backends.stores.database import redact
    from verity.backends.stores.tantivy_index import stored_index_lags

    configure_logging(logging.WARNING)
    settings = load_settings()
    with open_runtime(settings, generator=False, reranker=False) as runtime:
        stats = runtime.store.stats()
        where = "embedded Postgres in " + str(settings.data_dir) if runtime.db.embedded else redact(
            runtime.db.conninfo)
        lags = stored_index_lags(runtime.db, root=settings.data_dir / "lexical")
    info = {
        "database": where,
        "embedder": settings.embedder.model,
        "generator": settings.llm.base_url or f"local llama.cpp: {settings.llm.gguf_path}",
        "collections": [asdict(s) for s in stats],
        "lexical": settings.retrieval.lexical,
        "lexical_indexes": {k: None if v is None else asdict(v) for k, v in lags.items()},
        "dense_index": settings.retrieval.dense_index,
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
    typer.echo(f"lexical:   {settings.retrieval.lexical}")
    for name, lag in lags.items():
        typer.echo(f"lexical index {name}: " + (
            "not readable (being built, or rebuilt when next opened)" if lag is None else
            f"{lag.changes} changes behind, oldest {lag.seconds:.1f} s ago"))
    typer.echo(f"dense:     {settings.retrieval.dense_index}" + (
        " (held by each searching process; its lag is in that process's /readyz)"
        if settings.retrieval.dense_index == "memory" else ""))
