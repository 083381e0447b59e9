"""Reranking on SciFact: BM25, dense, hybrid (RRF) and hybrid + a reranker tuned on the corpus.

A standalone benchmark, independent of ``verity eval``. Three steps, each
runnable alone (``ingest`` and ``train`` write under ``VERITY_DATA_DIR``):

* ``ingest``: the BEIR SciFact corpus into a collection (source = ``_id``, the
  title, the abstract as one section); idempotent.
* ``train``: ``tune_reranker`` on the collection. It reads the corpus only, never
  a query or a judgement.
* ``eval``: nDCG@10 on the 300 test queries for each retriever, with trec_eval
  conventions: a ranked chunk stands for its document (``source``), each document
  counts once at its best chunk's rank, relevance is the qrels score, and every
  query in ``qrels/test.tsv`` counts (an empty ranking scores 0).

Run from the repository root:

    VERITY_DATA_DIR=/tmp/rerank-data HF_HUB_OFFLINE=1 PYTHONPATH=$PWD \\
        OMP_NUM_THREADS=1 python bench/rerank_scifact.py all --max-pairs 3600 --max-length 128
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from core.settings import RetrievalSettings, Settings
from core.types import Document, ScoredChunk, Section

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO.parent / "shared" / "datasets" / "scifact"
COLLECTION = "scifact"

log = logging.getLogger("bench")


def load_corpus(path: Path, *, fingerprint: str) -> Iterator[Document]:
    """SciFact's ``corpus.jsonl`` as documents: source = ``_id``, title, one text section."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            digest = hashlib.sha256(f"{fingerprint}\x00{line}".encode()).hexdigest()
            yield Document(source=str(row["_id"]), title=row.get("title", ""),
                           sections=(Section(text=row.get("text", "")),), content_hash=digest)


def load_queries(path: Path, *, ids: set[str]) -> dict[str, str]:
    """Query id -> text, for the ids given."""
    with path.open(encoding="utf-8") as f:
        rows = (json.loads(line) for line in f)
        return {str(r["_id"]): r["text"] for r in rows if str(r["_id"]) in ids}


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Query id -> {document id: relevance} from a BEIR ``qrels/*.tsv``."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def document_ranking(hits: Sequence[ScoredChunk], *, depth: int = 10) -> list[str]:
    """The first ``depth`` distinct documents, each at its best chunk's rank."""
    seen: list[str] = []
    for hit in hits:
        if hit.source not in seen:
            seen.append(hit.source)
        if len(seen) == depth:
            break
    return seen


def ndcg_at_k(ranking: Sequence[str], relevant: dict[str, int], *, k: int = 10) -> float:
    """nDCG@k with linear gains and log2 discounts, as trec_eval's ``ndcg_cut``."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 1)
              for rank, doc in enumerate(ranking[:k], start=1))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg else 0.0


def ingest(settings: Settings, *, dataset: Path, collection: str) -> dict[str, Any]:
    """Ingest the corpus (idempotent: unchanged documents are skipped)."""
    from core.embedders import SentenceTransformerEmbedder
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore
    from ingest.pipeline import IngestPipeline

    with Database(settings.store, data_dir=settings.data_dir) as db:
        pipeline = IngestPipeline(store=PgvectorStore(db),
                                  embedder=SentenceTransformerEmbedder(settings.embedder),
                                  chunking=settings.chunking)
        started = time.perf_counter()
        report = pipeline.ingest_documents(
            load_corpus(dataset / "corpus.jsonl", fingerprint=pipeline.fingerprint),
            collection=collection)
        seconds = time.perf_counter() - started
    log.info("%s", report.summary())
    return {"documents": len(report.added) + len(report.updated) + len(report.unchanged),
            "chunks_written": report.chunks_written, "seconds": round(seconds, 1)}


def train(settings: Settings, *, collection: str, args: argparse.Namespace) -> dict[str, Any]:
    """Tune the reranker on the collection's text; returns the training report."""
    from core.embedders import SentenceTransformerEmbedder
    from core.models import resolve_embedder
    from core.rerank_training import TuneOptions, tune_reranker
    from core.rerankers import default_reranker_dir
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore

    options = TuneOptions(max_pairs=args.max_pairs, epochs=args.epochs, negatives=args.negatives,
                          heldout=args.heldout, loss=args.loss, max_length=args.max_length,
                          learning_rate=args.learning_rate, batch_groups=args.batch_groups,
                          bm25_k1=settings.retrieval.bm25_k1, bm25_b=settings.retrieval.bm25_b)
    started = time.perf_counter()

    def on_step(step: int, total: int, loss: float) -> None:
        if step % 25 == 0 or step == total:
            log.info("step %d/%d loss %.3f (%.0fs)", step, total, loss,
                     time.perf_counter() - started)

    with Database(settings.store, data_dir=settings.data_dir) as db:
        report = tune_reranker(PgvectorStore(db), SentenceTransformerEmbedder(settings.embedder),
                               collection=collection, options=options, on_step=on_step,
                               base_model=resolve_embedder(settings.embedder.model),
                               out=default_reranker_dir(settings.data_dir))
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    return report


def runs(settings: Settings, *, rerank_top_n: int) -> dict[str, tuple[RetrievalSettings, str]]:
    """The retrievers compared: name -> (retrieval settings, rerank fusion or "" for none)."""
    r = settings.retrieval
    return {
        f"bm25 (k1={r.bm25_k1}, b={r.bm25_b})": (r.model_copy(update={"mode": "bm25"}), ""),
        "bm25 (k1=1.2, b=0.75)": (r.model_copy(update={"mode": "bm25", "bm25_k1": 1.2,
                                                       "bm25_b": 0.75}), ""),
        "dense": (r.model_copy(update={"mode": "dense"}), ""),
        "hybrid (RRF)": (r.model_copy(update={"mode": "hybrid", "fusion": "rrf"}), ""),
        "hybrid (RRF, BM25 k1=1.2, b=0.75)": (r.model_copy(update={
            "mode": "hybrid", "fusion": "rrf", "bm25_k1": 1.2, "bm25_b": 0.75}), ""),
        f"hybrid + tuned reranker (top {rerank_top_n}, replace)": (
            r.model_copy(update={"mode": "hybrid", "fusion": "rrf"}), "replace"),
        f"hybrid + tuned reranker (top {rerank_top_n}, rrf)": (
            r.model_copy(update={"mode": "hybrid", "fusion": "rrf"}), "rrf"),
    }


def evaluate(settings: Settings, *, dataset: Path, collection: str,
             rerank_top_n: int, only: Sequence[str] = ()) -> dict[str, Any]:
    """nDCG@10 and time per query of each retriever on the test queries."""
    from core.embedders import SentenceTransformerEmbedder
    from core.prompts import PromptLibrary
    from core.rag import RagPipeline
    from core.rerankers import build_reranker
    from core.stores.database import Database
    from core.stores.pgvector_store import PgvectorStore

    qrels = load_qrels(dataset / "qrels" / "test.tsv")
    queries = load_queries(dataset / "queries.jsonl", ids=set(qrels))
    reranker = build_reranker(settings.rerank.model_copy(update={"kind": "cross-encoder"}),
                              data_dir=settings.data_dir)
    results: dict[str, Any] = {}
    with Database(settings.store, data_dir=settings.data_dir) as db:
        embedder = SentenceTransformerEmbedder(settings.embedder)
        for name, (retrieval, rerank) in runs(settings, rerank_top_n=rerank_top_n).items():
            if only and not any(o in name for o in only):
                continue
            rag = RagPipeline(store=PgvectorStore(db), embedder=embedder, generator=None,
                              prompts=PromptLibrary.load(), settings=retrieval,
                              reranker=reranker if rerank else None, rerank_top_n=rerank_top_n,
                              rerank_fusion=rerank or "replace")
            results[name] = score_run(rag, queries, qrels, collection=collection,
                                      top_k=rerank_top_n if rerank else 50)
            log.info("%s: nDCG@10 %.4f", name, results[name]["ndcg@10"])
    return results


def score_run(rag: Any, queries: dict[str, str], qrels: dict[str, dict[str, int]], *,
              collection: str, top_k: int) -> dict[str, Any]:
    """Mean nDCG@10 over every query in ``qrels`` and the mean seconds per query."""
    total, started = 0.0, time.perf_counter()
    for qid, relevant in qrels.items():
        text = queries.get(qid)
        hits = rag.retrieve(text, collection=collection, top_k=top_k) if text else []
        total += ndcg_at_k(document_ranking(hits), relevant)
    seconds = time.perf_counter() - started
    return {"ndcg@10": round(total / len(qrels), 4), "queries": len(qrels),
            "seconds_per_query": round(seconds / len(qrels), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("step", choices=["ingest", "train", "eval", "all"])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--collection", default=COLLECTION)
    parser.add_argument("--max-pairs", type=int, default=3600)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--heldout", type=int, default=50)
    parser.add_argument("--loss", choices=["listwise", "bce"], default="listwise")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-groups", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rerank-top-n", type=int, default=30)
    parser.add_argument("--only", nargs="*", default=[], help="eval: runs whose name contains these")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    results: dict[str, Any] = {}
    if args.step in ("ingest", "all"):
        results["ingest"] = ingest(settings, dataset=args.dataset, collection=args.collection)
    if args.step in ("train", "all"):
        results["train"] = train(settings, collection=args.collection, args=args)
    if args.step in ("eval", "all"):
        results["eval"] = evaluate(settings, dataset=args.dataset, collection=args.collection,
                                   rerank_top_n=args.rerank_top_n, only=args.only)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
