import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from tests.helpers import processes_using
from verity.backends.stores.database import Database, apply_migrations, migration_files
from verity.core.errors import StoreError
from verity.core.settings import StoreSettings

pytestmark = pytest.mark.integration


def test_migrations_are_recorded_once(database: Database) -> None:
    assert apply_migrations(database.conninfo) == []  # all applied at open
    with psycopg.connect(database.conninfo) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        extension = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                                 ).fetchone()
    assert [(v, n) for v, n, _ in migration_files()] == rows
    assert extension is not None


def test_pgvector_binary_features_work(database: Database) -> None:
    with psycopg.connect(database.conninfo) as conn:
        row = conn.execute(
            "SELECT binary_quantize('[1,-2,3]'::halfvec)::text, "
            "'101'::bit(3) <~> '111'::bit(3)").fetchone()
    assert row == ("101", 1.0)


def test_unreachable_database_is_one_clear_error(tmp_path: Path) -> None:
    settings = StoreSettings(dsn=SecretStr("postgresql://verity:secret@127.0.0.1:1/verity"),
                             connect_timeout_s=2)
    with pytest.raises(StoreError) as info:
        Database(settings, data_dir=tmp_path).open()
    message = str(info.value)
    assert "cannot connect to the database" in message and "VERITY_STORE__DSN" in message
    assert "secret" not in message and "\n" not in message


def test_a_killed_holder_does_not_keep_the_embedded_server_running(tmp_path: Path) -> None:
    with Database(StoreSettings(), data_dir=tmp_path):
        pass
    # What a process killed with SIGKILL leaves behind: its pid in the list of holders.
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)
    (tmp_path / "postgres" / ".handle_pids.json").write_text(json.dumps([int(exited.stdout)]))
    with Database(StoreSettings(), data_dir=tmp_path) as db:
        assert db.ping() and processes_using(tmp_path)
    assert processes_using(tmp_path) == []


def test_closing_one_database_keeps_the_embedded_server_for_another_on_the_same_directory(
        tmp_path: Path) -> None:
    """A command or runtime that closes its Database must not stop a server still in use."""
    first = Database(StoreSettings(), data_dir=tmp_path).open()
    second = Database(StoreSettings(), data_dir=tmp_path).open()
    second.close()
    with first.pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    conninfo = first.conninfo
    first.close()  # the last user: the server stops
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(conninfo, connect_timeout=2).close()
