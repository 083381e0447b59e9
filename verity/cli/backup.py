"""``verity backup`` and ``verity restore``: the store to a file and back.

PostgreSQL holds every document, chunk, embedding, key and job; the index files in the
data directory are rebuilt from it after a restore. See
:mod:`verity.backends.stores.backup`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from verity.cli.common import clean_errors, configure_logging, fail, load_settings


@clean_errors
def backup(
    path: Annotated[Path, typer.Argument(help="the file to write (PostgreSQL custom format)")],
) -> None:
    """Write a consistent dump of the store to PATH; safe while the service runs."""
    from verity.backends.stores.backup import count_documents, dump_database
    from verity.backends.stores.database import Database

    configure_logging(logging.WARNING)
    settings = load_settings()
    with Database(settings.store, data_dir=settings.data_dir) as db:
        documents = count_documents(db)
        size = dump_database(db, path)
    typer.echo(f"backed up {documents} documents to {path} ({size / 1e6:.1f} MB)")


@clean_errors
def restore(
    path: Annotated[Path, typer.Argument(help="a file written by `verity backup`")],
    replace: Annotated[bool, typer.Option(
        "--replace", help="replace a database that already holds documents")] = False,
) -> None:
    """Restore the store from PATH and drop the index files, which are rebuilt from it.

    Stop the service and workers on this data directory first.
    """
    from verity.backends.stores.backup import (
        count_documents,
        drop_derived_indexes,
        restore_database,
    )
    from verity.backends.stores.database import Database

    configure_logging(logging.WARNING)
    settings = load_settings()
    if not path.is_file():
        raise fail(f"no backup at {path}: name a file written by `verity backup`")
    with Database(settings.store, data_dir=settings.data_dir) as db:
        present = count_documents(db)
        if present and not replace:
            raise fail(f"the database already holds {present} documents: pass --replace to "
                       "replace them with the backup")
        restore_database(db, path)
        restored = count_documents(db)
    removed = drop_derived_indexes(settings.data_dir)
    typer.echo(f"restored {restored} documents from {path}"
               + (f"; index files will be rebuilt ({', '.join(p.name for p in removed)})"
                  if removed else ""))
