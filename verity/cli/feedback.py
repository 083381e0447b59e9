"""``verity feedback export``: the feedback people gave answers, as a dataset or a table."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

import typer

from verity.cli.common import clean_errors, configure_logging, load_settings
from verity.core.types import Feedback, FeedbackRating

app = typer.Typer(help="Export the feedback given to answers.", no_args_is_help=True)

CSV_FIELDS = ("id", "created_at", "tenant", "collection", "rating", "reason", "question", "answer",
              "answer_status", "correct_answer", "comment", "cited_documents")


def as_qa(feedback: Iterable[Feedback]) -> str:
    """``verity eval qa`` JSON lines: the verdicts that name a correct answer or an abstention."""
    records = (f.qa_record() for f in feedback)
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records if r is not None)


def as_jsonl(feedback: Iterable[Feedback]) -> str:
    """Every verdict with everything stored about it, one JSON object a line."""
    return "".join(json.dumps({
        "id": f.id, "created_at": f.created_at.isoformat() if f.created_at else None,
        "tenant": f.tenant, "collection": f.collection, "rating": f.rating, "reason": f.reason,
        "question": f.question, "answer": f.answer, "answer_status": f.answer_status,
        "correct_answer": f.correct_answer, "comment": f.comment, "citations": list(f.citations),
        "trace": f.trace}, ensure_ascii=False) + "\n" for f in feedback)


def as_csv(feedback: Iterable[Feedback]) -> str:
    """Every verdict, one row each, for a spreadsheet (citations by document name only)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for f in feedback:
        cited = sorted({str(c.get("document", "")) for c in f.citations} - {""})
        writer.writerow([f.id, f.created_at.isoformat() if f.created_at else "", f.tenant,
                         f.collection, f.rating, f.reason or "", f.question, f.answer,
                         f.answer_status, f.correct_answer, f.comment, "; ".join(cited)])
    return out.getvalue()


FORMATS = {"qa": as_qa, "jsonl": as_jsonl, "csv": as_csv}


@app.command("export")
@clean_errors
def export(
    format: Annotated[Literal["qa", "jsonl", "csv"], typer.Option(
        "--format", "-f", help="qa: a `verity eval qa` dataset (JSONL) of the verdicts that give "
                               "a correct answer or say it should have abstained; jsonl: "
                               "everything; csv: a table")] = "qa",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write here (default: stdout)")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's (default: all)")] = None,
    rating: Annotated[FeedbackRating | None, typer.Option(help="only up or only down")] = None,
    collection: Annotated[str | None, typer.Option(help="only about this collection")] = None,
) -> None:
    """Export feedback, oldest first; `verity eval qa FILE` runs the qa format as a regression set."""
    from verity.answering.runtime import open_runtime
    from verity.backends.stores.feedback import FeedbackStore

    configure_logging(logging.WARNING)
    with open_runtime(load_settings(), generator=False, reranker=False) as runtime:
        verdicts = list(FeedbackStore(runtime.db).iterate(tenant=tenant, rating=rating,
                                                          collection=collection))
    text = FORMATS[format](verdicts)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"{len(verdicts)} verdicts read, written to {out}", err=True)
