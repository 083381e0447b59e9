"""``verity backup`` and ``verity restore`` round trip: a fresh data directory restored from
a backup holds the same rows and answers a question the same way, citing the same chunks."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.helpers import VERITY, cli_env, ingest_texts
from verity.answering.runtime import Runtime
from verity.backends.embedders import SentenceTransformerEmbedder
from verity.backends.generators import OpenAIChatGenerator
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.prompts import PromptLibrary
from verity.core.settings import StoreSettings
from verity.core.types import Answer

pytestmark = pytest.mark.integration

NOTES = {
    "shelves.md": "The blue binders of the audit team are on the third shelf of room 4.",
    "plants.md": "The office plants are watered every Tuesday by Sam, who also feeds the fish.",
    "keys.md": "Spare keys to the server room are kept in the safe at reception.",
}
ROWS = ("SELECT c.id, c.document_id, c.ordinal, md5(c.text), md5(c.embedding::text), "
        "md5(c.embedding_bin::text), d.source, d.content_hash, k.tenant, k.name "
        "FROM chunks c JOIN documents d ON d.id = c.document_id "
        "JOIN collections k ON k.id = c.collection_id ORDER BY c.id")
QUESTION = "Where are the blue binders of the audit team?"


def _rows(db: Database) -> list[tuple[Any, ...]]:
    with db.pool.connection() as conn:
        return list(conn.execute(ROWS).fetchall())


def _verity(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VERITY, *args], env=cli_env(data_dir), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def _answer(db: Database, data_dir: Path, embedder: SentenceTransformerEmbedder,
            generator: OpenAIChatGenerator | None) -> Answer:
    runtime = Runtime(settings=make_settings(data_dir), db=db, store=PgvectorStore(db),
                      embedder=embedder, prompts=PromptLibrary.load(), generator=generator)
    return runtime.rag().answer(QUESTION, collection="notes")


def test_a_restored_backup_holds_the_same_rows_and_answers_the_same(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, generator: OpenAIChatGenerator
) -> None:
    source, fresh, dump = tmp_path / "source", tmp_path / "fresh", tmp_path / "store.dump"
    with Database(StoreSettings(), data_dir=source) as db:
        ingest_texts(Runtime(settings=make_settings(source), db=db, store=PgvectorStore(db),
                             embedder=embedder, prompts=PromptLibrary.load()), "notes", NOTES)
        expected_rows = _rows(db)
        expected = _answer(db, source, embedder, generator)
        done = _verity(source, "backup", str(dump))
        assert done.returncode == 0, done.stderr
        assert "backed up 3 documents" in done.stdout

    done = _verity(fresh, "restore", str(dump))
    assert done.returncode == 0, done.stderr
    with Database(StoreSettings(), data_dir=fresh) as db:
        assert _rows(db) == expected_rows
        answer = _answer(db, fresh, embedder, generator)
    assert expected.status == "answered"
    assert (answer.text, answer.status) == (expected.text, expected.status)
    assert [(c.n, c.chunk_id) for c in answer.citations] == [
        (c.n, c.chunk_id) for c in expected.citations]


def test_restore_refuses_to_overwrite_documents_unless_told_and_drops_index_files(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    data_dir, dump = tmp_path / "data", tmp_path / "store.dump"
    with Database(StoreSettings(), data_dir=data_dir) as db:
        runtime = Runtime(settings=make_settings(data_dir), db=db, store=PgvectorStore(db),
                          embedder=embedder, prompts=PromptLibrary.load())
        ingest_texts(runtime, "notes", {"keys.md": NOTES["keys.md"]})
        done = _verity(data_dir, "backup", str(dump))
        assert done.returncode == 0, done.stderr
        ingest_texts(runtime, "notes", {"plants.md": NOTES["plants.md"]})
        (data_dir / "faiss" / "default" / "notes").mkdir(parents=True)

        refused = _verity(data_dir, "restore", str(dump))
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            "error: the database already holds 2 documents: pass --replace to replace them "
            "with the backup"]
        assert len({r[1] for r in _rows(db)}) == 2

        done = _verity(data_dir, "restore", "--replace", str(dump))
        assert done.returncode == 0, done.stderr
        assert {r[6] for r in _rows(db)} == {"keys.md"}
    assert not (data_dir / "faiss").exists()

    missing = _verity(data_dir, "restore", str(tmp_path / "nothing.dump"))
    assert missing.returncode == 2 and "no backup at" in missing.stderr
