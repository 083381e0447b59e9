"""``verity``: ingest documents, serve the API, ask questions, show status.

This module only builds the command line: each command group lives in a module of its own,
and what the commands share in :mod:`verity.cli.common`. Every failure we expect ends in
one ``error: ...`` line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import typer

from verity.cli import ask, backup, feedback, ingest, keys, reindex, serve, tune
from verity.cli import eval as eval_commands

app = typer.Typer(
    name="verity",
    help="Verity: grounded, cited answers from your documents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command()(ingest.ingest)
app.command()(serve.serve)
app.command("worker")(serve.worker_command)
app.command()(ask.ask)
app.add_typer(tune.app, name="tune")
app.command()(ask.status)
app.add_typer(keys.app, name="keys")
app.add_typer(feedback.app, name="feedback")
app.add_typer(eval_commands.app, name="eval")
app.command()(reindex.reindex)
app.command()(backup.backup)
app.command()(backup.restore)


def main() -> None:  # pragma: no cover
    app()
