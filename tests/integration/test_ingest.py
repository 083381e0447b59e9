import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, LiteralString

import pytest

from ingest.attributes import DocumentAttributes
from ingest.beir import load_beir_corpus
from ingest.pipeline import IngestPipeline, discover
from tests.conftest import DOCS
from tests.helpers import VERITY, cli_env, make_docx, make_pdf, make_pptx, processes_using
from verity.backends.embedders import LocalEmbedder
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.errors import LoaderError
from verity.core.settings import ChunkingSettings, StoreSettings
from verity.core.types import Document, Section

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(store: PgvectorStore, embedder: LocalEmbedder) -> IngestPipeline:
    return IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    shutil.copytree(DOCS, root)
    return root


def _count(store: PgvectorStore, collection: str) -> tuple[int, int]:
    [s] = [s for s in store.stats() if s.name == collection]
    return s.documents, s.chunks


def test_ingest_is_idempotent_and_tracks_changes(
    pipeline: IngestPipeline, store: PgvectorStore, corpus: Path, collection: str
) -> None:
    first = pipeline.run([corpus], collection=collection)
    n_files = len(list(corpus.glob("*.md")))
    assert first.ok and len(first.added) == n_files and first.chunks_written > n_files
    assert "docs/configuration.md" in first.added
    assert _count(store, collection) == (n_files, first.chunks_written)

    again = pipeline.run([corpus], collection=collection)
    assert again.chunks_written == 0 and len(again.unchanged) == n_files

    (corpus / "api.md").write_text("# API\nOnly one endpoint now.\n")
    changed = pipeline.run([corpus], collection=collection)
    assert changed.updated == ["docs/api.md"] and changed.chunks_written == 1

    (corpus / "architecture.md").unlink()
    synced = pipeline.run([corpus], collection=collection, sync=True)
    assert synced.removed == ["docs/architecture.md"]
    assert _count(store, collection)[0] == n_files - 1


def test_broken_files_are_skipped_and_reported(
    pipeline: IngestPipeline, store: PgvectorStore, tmp_path: Path, collection: str
) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "good.md").write_text("# Good\nThe launch code is 7-alpha.\n")
    (root / "report.pdf").write_bytes(make_pdf(["Quarterly revenue rose."]))
    (root / "empty.txt").write_bytes(b"")
    (root / "junk.txt").write_bytes(b"\x00\xff\x00binary")
    (root / "corrupt.pdf").write_bytes(b"%PDF-1.7 truncated")
    (root / "latin1.txt").write_bytes("na\u00efve".encode("latin-1"))
    report = pipeline.run([root, tmp_path / "missing"], collection=collection)
    assert sorted(report.added) == ["mixed/good.md", "mixed/report.pdf"]
    failed = dict(report.failed)
    assert set(failed) == {"mixed/empty.txt", "mixed/junk.txt", "mixed/corrupt.pdf",
                           "mixed/latin1.txt", str(tmp_path / "missing")}
    assert not report.ok
    hits = store.search_dense(collection=collection,
                              query=pipeline.embedder.embed_query("revenue"), top_k=1)
    assert hits[0].source == "mixed/report.pdf" and hits[0].chunk.page == 1


def test_discover_names_sources_by_their_root(tmp_path: Path) -> None:
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    (root / "sub" / "c.bin").write_text("c")
    (root / ".hidden.md").write_text("h")
    files, problems = discover([root])
    assert sorted(f.source for f in files) == ["kb/a.md", "kb/sub/b.txt"]
    files, _ = discover([root], exclude=["kb/sub/*"])
    assert [f.source for f in files] == ["kb/a.md"]
    assert problems == []


def test_chunks_respect_the_token_budget(
    pipeline: IngestPipeline, embedder: LocalEmbedder, tmp_path: Path
) -> None:
    p = tmp_path / "long.txt"
    p.write_text(" ".join(f"word{i}" for i in range(3000)))
    from ingest.loaders import load_file

    doc = load_file(p, source="long.txt", max_bytes=10**7)
    chunks = pipeline.splitter.split(doc, doc_id="x")
    assert len(chunks) > 5
    assert max(c.token_count for c in chunks) <= ChunkingSettings().chunk_tokens
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def _documents(db: Database, collection: str) -> dict[str, dict[str, Any]]:
    """source -> the documents row (title, metadata, groups, chunk_count) of a collection."""
    with db.pool.connection() as conn:
        rows = conn.execute(
            "SELECT d.source, d.title, d.metadata, d.acl_groups, d.chunk_count FROM documents d "
            "JOIN collections c ON c.id = d.collection_id WHERE c.name = %s", (collection,)
        ).fetchall()
    return {r[0]: {"title": r[1], "metadata": r[2], "groups": r[3], "chunks": r[4]} for r in rows}


def test_office_and_data_files_are_ingested_and_corrupt_ones_skipped(
    pipeline: IngestPipeline, store: PgvectorStore, tmp_path: Path, collection: str
) -> None:
    root = tmp_path / "formats"
    root.mkdir()
    (root / "leave.docx").write_bytes(make_docx([("Heading 1", "Leave"),
                                                 ("Normal", "Parental leave is sixteen weeks.")]))
    (root / "q1.pptx").write_bytes(make_pptx([("Q1", "Revenue rose five percent.", ""),
                                              ("Hiring", "We hire two engineers.", "")]))
    (root / "staff.csv").write_text("name,office\nAna,Lisbon\nBo,Oslo\n")
    (root / "config.json").write_text('{"database": {"host": "pg.internal"}}')
    (root / "faq.jsonl").write_text('{"q": "Who runs payroll?", "a": "Finance."}\n')
    (root / "broken.docx").write_bytes(b"PK\x03\x04 truncated")
    (root / "broken.pptx").write_bytes(make_pptx([("x", "y", "")])[:500])
    report = pipeline.run([root], collection=collection)
    assert sorted(report.added) == ["formats/config.json", "formats/faq.jsonl",
                                    "formats/leave.docx", "formats/q1.pptx", "formats/staff.csv"]
    assert sorted(dict(report.failed)) == ["formats/broken.docx", "formats/broken.pptx"]
    hits = store.search_dense(collection=collection, top_k=1,
                              query=pipeline.embedder.embed_query("engineers to hire"))
    assert (hits[0].source, hits[0].chunk.page, hits[0].chunk.heading) == (
        "formats/q1.pptx", 2, "Hiring")


def test_sidecars_and_run_attributes_land_in_the_documents_table(
    pipeline: IngestPipeline, database: Database, tmp_path: Path, collection: str
) -> None:
    root = tmp_path / "kb"
    root.mkdir()
    (root / "policy.md").write_text("# Policy\nLeave is sixteen weeks.\n")
    sidecar = root / "policy.md.meta.json"
    sidecar.write_text('{"metadata": {"owner": "hr", "team": "people"}, "groups": ["hr"]}')
    (root / "plain.txt").write_text("Nothing special here.")
    (root / "broken.txt").write_text("Has a bad sidecar.")
    (root / "broken.txt.meta.json").write_text('{"groups": "hr"}')
    run = DocumentAttributes(metadata={"team": "all", "env": "prod"}, groups=("legal",))

    report = pipeline.run([root], collection=collection, attributes=run)
    assert sorted(report.added) == ["kb/plain.txt", "kb/policy.md"]
    assert [s for s, _ in report.failed] == ["kb/broken.txt"]
    assert "sidecar broken.txt.meta.json" in report.failed[0][1]
    docs = _documents(database, collection)
    assert set(docs) == {"kb/plain.txt", "kb/policy.md"}
    assert docs["kb/policy.md"]["metadata"] == {"owner": "hr", "team": "people", "env": "prod"}
    assert docs["kb/policy.md"]["groups"] == ["hr", "legal"]
    assert docs["kb/plain.txt"]["metadata"] == {"team": "all", "env": "prod"}
    assert docs["kb/plain.txt"]["groups"] == ["legal"]

    assert pipeline.run([root], collection=collection, attributes=run).updated == []
    sidecar.write_text('{"metadata": {"owner": "legal"}, "groups": ["hr", "exec"]}')
    changed = pipeline.run([root], collection=collection, attributes=run)
    assert changed.updated == ["kb/policy.md"] and sorted(changed.unchanged) == ["kb/plain.txt"]
    assert _documents(database, collection)["kb/policy.md"]["groups"] == ["exec", "hr", "legal"]
    regrouped = pipeline.run([root], collection=collection)
    assert sorted(regrouped.updated) == ["kb/plain.txt", "kb/policy.md"]
    assert _documents(database, collection)["kb/plain.txt"]["groups"] == []


def _write_beir(folder: Path, records: list[tuple[str, str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"_id": i, "title": t, "text": x, "metadata": {}}) for i, t, x in records]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return folder


BEIR_RECORDS = [
    ("101", "Aspirin and fever", "Aspirin lowers fever in adults within an hour."),
    ("102", "Statins", "Statins reduce LDL cholesterol and cardiovascular events."),
    ("103", "Vitamin D", "Vitamin D supplementation did not prevent fractures."),
]


def test_beir_corpus_is_ingested_one_document_per_record(
    pipeline: IngestPipeline, store: PgvectorStore, database: Database, tmp_path: Path,
    collection: str,
) -> None:
    corpus = _write_beir(tmp_path / "mini-beir", [*BEIR_RECORDS, ("104", "", "")])
    documents = load_beir_corpus(corpus, fingerprint=pipeline.fingerprint)
    report = pipeline.ingest_documents(documents, collection=collection)
    assert sorted(report.added) == ["101", "102", "103"]
    assert report.failed == [("104", "no text found")]
    assert {s: d["title"] for s, d in _documents(database, collection).items()} == {
        i: t for i, t, _ in BEIR_RECORDS}
    hits = store.search_dense(collection=collection, top_k=1,
                              query=pipeline.embedder.embed_query("cholesterol lowering drugs"))
    assert hits[0].source == "102"
    again = pipeline.ingest_documents(load_beir_corpus(corpus, fingerprint=pipeline.fingerprint),
                                      collection=collection)
    assert sorted(again.unchanged) == ["101", "102", "103"] and again.chunks_written == 0
    assert report.seconds > 0


@pytest.mark.slow
def test_cli_ingests_beir_with_groups_and_metadata(tmp_path: Path) -> None:
    corpus = _write_beir(tmp_path / "mini-beir", BEIR_RECORDS)
    data_dir = tmp_path / "data"
    result = subprocess.run(
        VERITY + ["ingest", str(corpus), "--format", "beir", "--collection", "sci",
                  "--group", "research", "--group", "hr", "--meta", "dataset=mini", "--json"],
        env=cli_env(data_dir), capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["added"]) == ["101", "102", "103"]
    with Database(StoreSettings(), data_dir=data_dir) as db:
        docs = _documents(db, "sci")
    assert {d["title"] for d in docs.values()} == {t for _, t, _ in BEIR_RECORDS}
    assert all(d["groups"] == ["hr", "research"] for d in docs.values())
    assert all(d["metadata"] == {"dataset": "mini"} for d in docs.values())


PROGRESS_LINE = re.compile(r"ingest: (\d+)/3 documents, [\d.]+ docs/s, [\d.]+ chunks/s, ETA \w+")


@pytest.mark.slow
def test_ingest_off_a_terminal_logs_plain_progress_lines(tmp_path: Path) -> None:
    corpus = _write_beir(tmp_path / "mini-beir", BEIR_RECORDS)
    result = subprocess.run(
        VERITY + ["ingest", str(corpus), "--format", "beir", "--progress-every", "0"],
        env=cli_env(tmp_path / "data"), capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ingest:")]
    matches = [PROGRESS_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    # One line per document (--progress-every 0), then the closing line; no bar redraws.
    assert [int(m[1]) for m in matches if m] == [1, 2, 3, 3]
    assert "\r" not in result.stderr


@pytest.mark.slow
def test_ingest_on_a_terminal_draws_a_progress_bar(tmp_path: Path) -> None:
    corpus = _write_beir(tmp_path / "mini-beir", BEIR_RECORDS)
    reader, terminal = pty.openpty()
    # A real terminal has a size; a new pty is 0x0, on which tqdm draws nothing.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        proc = subprocess.run(
            VERITY + ["ingest", str(corpus), "--format", "beir", "--progress-every", "0"],
            env=cli_env(tmp_path / "data"), stdout=subprocess.PIPE, stderr=terminal, text=True,
            timeout=300, stdin=subprocess.DEVNULL)
        os.set_blocking(reader, False)
        screen = _read_all(reader)
    finally:
        os.close(reader)
        os.close(terminal)
    assert proc.returncode == 0, screen
    assert "3/3" in screen and "chunks/s" in screen and "\r" in screen
    assert "ingest: 3/3 documents" not in screen  # the bar, not log lines


def _read_all(fd: int) -> str:
    parts = []
    while True:
        try:
            part = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not part:
            break
        parts.append(part)
    return b"".join(parts).decode(errors="replace")


N_NOTES = 72
TOPICS = ["payroll", "leave", "security", "hiring", "travel", "pensions", "laptops", "offices"]

# Every chunk as (document id, chunk id, text digest): what a clean run must reproduce.
CHUNK_ROWS = "SELECT d.id, k.id, md5(k.text) FROM documents d JOIN chunks k ON k.document_id = d.id"
# Documents whose recorded chunk_count is not their number of chunks (a half-written one).
MISCOUNTED = """
SELECT d.source FROM documents d
WHERE d.chunk_count <> (SELECT count(*) FROM chunks k WHERE k.document_id = d.id)
"""


def _write_notes(root: Path) -> Path:
    """``N_NOTES`` small Markdown notes of 8 one-line sections (8 short chunks) each.

    576 chunks take two embedding batches (a batch closes at 512 chunks), so a
    run can be caught with some documents written and others not; short
    chunks keep the runs cheap.
    """
    root.mkdir()
    for i in range(N_NOTES):
        sections = [f"## Part {p}\nThe {TOPICS[(i + p) % len(TOPICS)]} team of note {i} "
                    f"logged {i * 31 + p * 7} items on day {p + 1}." for p in range(8)]
        (root / f"note-{i:02d}.md").write_text(f"# Note {i}\n" + "\n".join(sections))
    return root


def _ingest_cli(corpus: Path, data_dir: Path) -> dict[str, Any]:
    result = subprocess.run(VERITY + ["ingest", str(corpus), "--json"], env=cli_env(data_dir),
                            capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _query(db: Database, sql: LiteralString) -> set[tuple[Any, ...]]:
    with db.pool.connection() as conn:
        return set(conn.execute(sql).fetchall())


def _kill_when_partly_written(corpus: Path, data_dir: Path, db: Database) -> int:
    """Start ``verity ingest``, SIGKILL it once some documents but not all are in; their count."""
    proc = subprocess.Popen(VERITY + ["ingest", str(corpus)], env=cli_env(data_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        written = _wait_until_partly_written(proc, db)
    finally:
        proc.kill()  # SIGKILL; nothing if it has exited already
        _, err = proc.communicate(timeout=30)
    assert written, f"never saw a partly written run (exit code {proc.returncode}): {err[-2000:]}"
    return written


def _wait_until_partly_written(proc: subprocess.Popen[str], db: Database) -> int:
    """The number of documents once it is between 0 and all; 0 if the run ended first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        [(written,)] = _query(db, "SELECT count(*) FROM documents")
        if 0 < written < N_NOTES:
            return int(written)
        time.sleep(0.02)
    return 0


@pytest.mark.slow
def test_ingest_killed_midway_resumes_to_the_rows_of_a_clean_run(
    embedder: LocalEmbedder, tmp_path: Path
) -> None:
    corpus = _write_notes(tmp_path / "notes")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    # This process holds the embedded server of ``killed`` throughout; the killed run and the
    # resumed run attach to it, and closing this Database last must stop it.
    db = Database(StoreSettings(), data_dir=killed).open()
    try:
        seen = _kill_when_partly_written(corpus, killed, db)
        partial = _query(db, CHUNK_ROWS)
        assert _query(db, MISCOUNTED) == set()
        resumed = _ingest_cli(corpus, killed)
        rows = _query(db, CHUNK_ROWS)
        assert _query(db, MISCOUNTED) == set()
    finally:
        db.close()
    assert seen <= len({doc for doc, _, _ in partial}) < N_NOTES
    assert len(resumed["added"]) + len(resumed["unchanged"]) == N_NOTES and resumed["added"]
    assert len(resumed["unchanged"]) >= seen and not resumed["failed"]

    # The clean run: the same pipeline and settings as the CLI's, in this process (the
    # embedder is loaded already), into a fresh data dir.
    with Database(StoreSettings(), data_dir=clean) as clean_db:
        fresh = IngestPipeline(store=PgvectorStore(clean_db), embedder=embedder,
                               chunking=ChunkingSettings())
        assert fresh.run([corpus], collection="default").ok
        expected = _query(clean_db, CHUNK_ROWS)
    assert rows == expected
    assert partial < rows
    assert processes_using(killed) == [] and processes_using(clean) == []


def test_a_failing_document_stream_raises_and_leaves_no_thread_behind(
    pipeline: IngestPipeline, store: PgvectorStore, collection: str,
) -> None:
    def documents() -> Iterator[Document]:
        yield Document(source="a", title="A", sections=(Section(text="Payroll runs monthly."),),
                       content_hash="h-a")
        raise LoaderError("line 2 is not valid JSON; fix or remove that line")

    with pytest.raises(LoaderError, match="line 2"):
        pipeline.ingest_documents(documents(), collection=collection)
    time.sleep(0.5)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("verity-ingest")]
    # The failure came before the batch holding "a" was embedded: nothing half-done is stored.
    assert _count(store, collection) == (0, 0)
    report = pipeline.ingest_documents(iter([Document(
        source="a", title="A", sections=(Section(text="Payroll runs monthly."),), content_hash="h-a")]),
        collection=collection)
    assert report.added == ["a"] and _count(store, collection) == (1, 1)
