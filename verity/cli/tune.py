"""``verity tune``: adapt models to your own documents."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TextIO

import typer

from verity.cli.common import (
    CollectionOpt,
    clean_errors,
    collection_or_default,
    configure_logging,
    fail,
    load_settings,
)
from verity.core.progress import DEFAULT_EVERY_S, ProgressReporter, ProgressState

app = typer.Typer(help="Adapt models to your own documents.", no_args_is_help=True)

OutOpt = Annotated[Path | None, typer.Option(
    help="where to save (default: DATA_DIR/models/reranker, which the cross-encoder "
         "reranker loads)")]
InnerOpt = Annotated[bool, typer.Option(
    help="also a sentence from the middle of each chunk as a pseudo-query")]
LastOpt = Annotated[bool, typer.Option(
    help="also the last sentence of each chunk (an abstract's finding) as a pseudo-query")]


@app.command("reranker")
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
    out: OutOpt = None,
    seed: Annotated[int, typer.Option(help="fixes sampling and training order")] = 0,
    inner_sentences: InnerOpt = True,
    last_sentences: LastOpt = False,
) -> None:
    """Fine-tune a cross-encoder reranker on a collection, without labels.

    Pseudo-queries come from titles, headings and sentences of the collection's
    own chunks; hard negatives from BM25 and dense search over other documents.
    Set VERITY_RERANK__KIND=cross-encoder to use the result.
    """
    from verity.answering.runtime import open_runtime
    from verity.backends.models import resolve_embedder
    from verity.backends.rerankers import default_reranker_dir
    from verity.tuner.reranker import TuneOptions
    from verity.tuner.reranker import tune_reranker as tune

    configure_logging(logging.INFO)
    if loss not in ("listwise", "bce"):
        raise fail(f"unknown loss {loss!r}; use 'listwise' or 'bce'")
    settings = load_settings()
    name = collection_or_default(collection, settings)
    target = (out or default_reranker_dir(settings.data_dir)).expanduser()
    options = TuneOptions(max_pairs=max_pairs, epochs=epochs, negatives=negatives,
                          loss=loss, heldout=heldout, seed=seed,  # type: ignore[arg-type]
                          max_length=max_length, inner_sentences=inner_sentences,
                          last_sentences=last_sentences,
                          bm25_k1=settings.retrieval.bm25_k1, bm25_b=settings.retrieval.bm25_b)
    with open_runtime(settings, generator=False, reranker=False) as runtime, \
            training_progress() as progress:
        report = tune(runtime.store, runtime.embedder, collection=name, out=target,
                      options=options, base_model=resolve_embedder(settings.embedder.model),
                      on_step=lambda step, total, loss: progress.advance(total=total, loss=loss))
    held = report["heldout"]
    typer.echo(f"saved to {target}: {report['pairs']} pairs, {report['epochs']} epoch(s) in "
               f"{report['seconds']['training']:.0f}s; held-out MRR {held['mrr_before']:.3f} -> "
               f"{held['mrr_after']:.3f} ({held['queries']} pseudo-queries)")


def training_progress(*, every_s: float = DEFAULT_EVERY_S, stream: TextIO | None = None,
                      tty: bool | None = None,
                      clock: Callable[[], float] = time.monotonic) -> ProgressReporter:
    """Training progress: a bar with the loss on a terminal, else
    ``train: step 25/300, loss 0.412, 37 s`` every ``every_s`` seconds and at the end."""
    return ProgressReporter("train", unit="step", line=_train_line, postfix=_loss,
                            every_s=every_s, stream=stream, tty=tty, clock=clock)


def _train_line(state: ProgressState) -> str:
    return (f"step {state.done}/{state.total}, loss {state.values.get('loss', 0.0):.3f}, "
            f"{state.elapsed:.0f} s")


def _loss(state: ProgressState) -> str:
    return f"loss={state.values.get('loss', 0.0):.3f}"
