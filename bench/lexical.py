"""BM25 benchmark: the PostgreSQL postings against the tantivy index, through the store.

SciFact's abstracts (one chunk each, title in front) are written into a fresh embedded
PostgreSQL: once as they are, for nDCG@10 on the 300 test queries, and ``--copies``
times with varied ids for latency (every fourth chunk readable only by one
of seven groups). For each engine: nDCG@10, and the store call's p50/p95 over the test
queries (top 10, PostgreSQL fetching the hit rows in both) without a filter and as a
caller in two of the seven groups; for tantivy also the build time and bytes per chunk.

Run from the repository root (see docs/BENCHMARKS.md for the numbers)::

    PYTHONPATH=. python bench/lexical.py --dataset ../shared/datasets/scifact --copies 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.datasets import CorpusRecord, iter_corpus, load_beir
from eval.metrics import ndcg_at_k
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.backends.stores.tantivy_index import IndexKey, LexicalIndexes
from verity.core.settings import StoreSettings
from verity.core.types import Chunk, Document, SearchFilter, document_id

DIM = 4
GROUPS = 7


def load(store: PgvectorStore, name: str, corpus: list[CorpusRecord], *, copies: int) -> float:
    """Write ``copies`` of the corpus into collection ``name``; returns the seconds it took."""
    store.ensure_collection(name, embed_model="none", embed_dim=DIM)
    vector = np.ones((1, DIM), dtype=np.float32) / 2
    started = time.perf_counter()
    for copy in range(copies):
        for i, doc in enumerate(corpus):
            source = f"{doc.id}~{copy}"
            groups = (f"g{(i + copy) % GROUPS}",) if (i + copy) % 4 == 0 else ()
            doc_id = document_id(collection=f"{store.tenant}/{name}", source=source)
            chunk = Chunk(id=f"{name}:{doc.id}~{copy}", document_id=doc_id, ordinal=0,
                          text=doc.text)
            store.write_document(collection=name, document=Document(
                source=source, title=doc.title, sections=(), content_hash=source,
                acl_groups=groups), chunks=[chunk], embeddings=vector)
    return time.perf_counter() - started


def collection_id(db: Database, name: str) -> int:
    with db.pool.connection() as conn:
        row = conn.execute("SELECT id FROM collections WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def timed(store: PgvectorStore, name: str, queries: list[str], *,
          where: SearchFilter | None) -> dict[str, float]:
    store.search_lexical(collection=name, query=queries[0], top_k=10, where=where)  # warm-up
    ms = []
    for query in queries:
        started = time.perf_counter()
        store.search_lexical(collection=name, query=query, top_k=10, where=where)
        ms.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(ms, n=20)
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(cuts[18], 2)}


def quality(store: PgvectorStore, name: str, dataset: Any) -> float:
    scores = []
    for qid, text in dataset.queries.items():
        hits = store.search_lexical(collection=name, query=text, top_k=10)
        ranking = [h.chunk.id.split(":", 1)[1].split("~")[0] for h in hits]
        scores.append(ndcg_at_k(ranking, dataset.qrels[qid], 10))
    return round(sum(scores) / len(scores), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    dataset = load_beir(args.dataset)
    corpus = list(iter_corpus(args.dataset))
    queries = list(dataset.queries.values())
    report: dict[str, Any] = {"copies": args.copies, "chunks": len(corpus) * args.copies}
    with tempfile.TemporaryDirectory() as tmp, Database(StoreSettings(),
                                                        data_dir=Path(tmp)) as db:
        plain = PgvectorStore(db, tenant="bench")
        load(plain, "scifact", corpus, copies=1)
        report["load_s"] = round(load(plain, "scaled", corpus, copies=args.copies), 1)
        with LexicalIndexes(db, root=Path(tmp) / "lexical") as indexes:
            indexed = PgvectorStore(db, tenant="bench", lexical=indexes)
            for name in ("scifact", "scaled"):
                started = time.perf_counter()
                key = IndexKey("bench", name, collection_id(db, name))
                assert indexes.wait_ready(key, timeout_s=3600)
                report[f"tantivy_build_s_{name}"] = round(time.perf_counter() - started, 1)
            files = (Path(tmp) / "lexical" / "bench" / "scaled").iterdir()
            report["tantivy_bytes_per_chunk"] = round(
                sum(f.stat().st_size for f in files) / report["chunks"])
            for engine, store in (("postgres", plain), ("tantivy", indexed)):
                report[engine] = {
                    "ndcg@10": quality(store, "scifact", dataset),
                    "all": timed(store, "scaled", queries, where=None),
                    "acl": timed(store, "scaled", queries,
                                 where=SearchFilter(groups=("g1", "g3"))),
                }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
