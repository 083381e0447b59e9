"""What per-collection BM25 statistics cost a caller who sees part of a collection.

tantivy keeps N, the average length and the document frequencies per collection, so a
caller who may read only some chunks is ranked with statistics that include chunks it
cannot see. This measures the effect on ranking quality: SciFact's abstracts (one chunk
each) are written twice into a fresh embedded PostgreSQL:

- ``shared``: every abstract, a share ``--hidden`` of them readable only by group ``hidden``
  (chosen by a hash of the id, the same ones every run);
- ``alone``: only the abstracts everyone may read, as if the others did not exist.

A caller without groups searches ``shared`` through tantivy (statistics over every chunk)
and ``alone`` through tantivy (statistics over what it may read): same visible chunks, the
statistics differ and nothing else. PostgreSQL's BM25 on ``shared`` under the caller's
filter (statistics over the visible chunks, k1 1.2, b 0.75 as tantivy's) is shown too. Test
queries with at least one visible relevant abstract, qrels restricted to the visible ones;
nDCG@10 with a paired bootstrap of shared against alone.

Run from the repository root (see docs/BENCHMARKS.md)::

    PYTHONPATH=. python bench/acl_statistics.py --dataset ../shared/datasets/scifact
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.lexical import collection_id
from eval.datasets import CorpusRecord, iter_corpus, load_beir
from eval.metrics import ndcg_at_k, paired_bootstrap
from verity.backends.stores.database import Database
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.backends.stores.tantivy_index import IndexKey, LexicalIndexes
from verity.core.settings import StoreSettings
from verity.core.types import Chunk, Document, SearchFilter, document_id

DIM = 4
CALLER = SearchFilter(groups=())


def hidden(doc_id: str, share: float) -> bool:
    """Whether an abstract is readable by group ``hidden`` only (a stable hash of its id)."""
    digest = hashlib.sha256(doc_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def write(store: PgvectorStore, name: str, corpus: list[CorpusRecord], *, share: float,
          visible_only: bool) -> None:
    store.ensure_collection(name, embed_model="none", embed_dim=DIM)
    vector = np.ones((1, DIM), dtype=np.float32) / 2
    for doc in corpus:
        secret = hidden(doc.id, share)
        if secret and visible_only:
            continue
        doc_id = document_id(collection=f"{store.tenant}/{name}", source=doc.id)
        store.write_document(collection=name, document=Document(
            source=doc.id, title=doc.title, sections=(), content_hash=doc.id,
            acl_groups=("hidden",) if secret else ()),
            chunks=[Chunk(id=f"{name}:{doc.id}", document_id=doc_id, ordinal=0, text=doc.text)],
            embeddings=vector)


def per_query(store: PgvectorStore, name: str, queries: dict[str, str],
              qrels: dict[str, dict[str, int]], **search: Any) -> tuple[list[float], list[list[str]]]:
    """Each query's nDCG@10 and its top 10 abstract ids."""
    scores, rankings = [], []
    for qid, text in queries.items():
        hits = store.search_lexical(collection=name, query=text, top_k=10, where=CALLER, **search)
        rankings.append([h.chunk.id.split(":", 1)[1] for h in hits])
        scores.append(ndcg_at_k(rankings[-1], qrels[qid], 10))
    return scores, rankings


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--hidden", type=float, default=0.5,
                        help="share of abstracts the caller may not read")
    args = parser.parse_args()
    dataset = load_beir(args.dataset)
    corpus = list(iter_corpus(args.dataset))
    visible_qrels = {qid: {d: g for d, g in judged.items() if not hidden(d, args.hidden)}
                     for qid, judged in dataset.qrels.items()}
    queries = {qid: text for qid, text in dataset.queries.items()
               if any(g > 0 for g in visible_qrels.get(qid, {}).values())}
    report: dict[str, Any] = {"hidden_share": args.hidden, "queries": len(queries),
                              "abstracts": len(corpus)}
    with tempfile.TemporaryDirectory() as tmp, Database(StoreSettings(),
                                                        data_dir=Path(tmp)) as db:
        plain = PgvectorStore(db, tenant="bench")
        write(plain, "shared", corpus, share=args.hidden, visible_only=False)
        write(plain, "alone", corpus, share=args.hidden, visible_only=True)
        with LexicalIndexes(db, root=Path(tmp) / "lexical") as indexes:
            for name in ("shared", "alone"):
                assert indexes.wait_ready(IndexKey("bench", name, collection_id(db, name)),
                                          timeout_s=3600)
            indexed = PgvectorStore(db, tenant="bench", lexical=indexes)
            runs = {
                "tantivy, statistics over the collection": per_query(
                    indexed, "shared", queries, visible_qrels),
                "tantivy, statistics over the visible chunks only": per_query(
                    indexed, "alone", queries, visible_qrels),
                "postgres, statistics over the visible chunks (b 0.75)": per_query(
                    plain, "shared", queries, visible_qrels, b=0.75),
            }
    (shared, shared_top), (alone, alone_top) = list(runs.values())[:2]
    report["ndcg@10"] = {name: round(float(np.mean(s)), 4) for name, (s, _) in runs.items()}
    result = paired_bootstrap(shared, alone)
    report["collection_minus_visible"] = {
        "mean": round(result[0], 4), "ci95": [round(result[1], 4), round(result[2], 4)],
        "p": round(result[3], 4)}
    report["same_top10_share"] = round(float(np.mean(
        [a == b for a, b in zip(shared_top, alone_top, strict=True)])), 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
