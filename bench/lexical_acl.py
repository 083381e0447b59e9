"""ACL-filtered BM25 in the tantivy index: the filter inside tantivy against the pruned rule.

SciFact's abstracts (title in front) are written ``--copies`` times straight into a tantivy
index with the production schema and analysis (no PostgreSQL: this measures the index's
search alone). Every chunk is readable by group ``all``, every second one also by ``g50``,
every hundredth also by ``g1``. For no filter and for callers in ``g50`` and ``g1``:
p50/p95 of ``LexicalIndex.search`` over the first ``--queries`` SciFact queries (top 50, as
hybrid asks), once with the ACL clause always inside tantivy's query (the engine before
``POST_FILTER_MIN_SHARE``) and once with the current rule, and whether both return the same
hits in the same order.

Run from the repository root (see docs/BENCHMARKS.md)::

    PYTHONPATH=. python bench/lexical_acl.py --dataset ../shared/datasets/scifact --copies 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tantivy

from verity.backends.stores import tantivy_index as ti
from verity.core.lexical import analyze

TOP_K = 50


def build(path: Path, texts: list[str], *, copies: int) -> ti.LexicalIndex:
    """An index of ``copies`` x ``texts`` with the bench's ACL groups, opened for searching."""
    index = tantivy.Index(ti.SCHEMA, path=str(path))
    writer = index.writer(200_000_000, 1)
    bodies = [" ".join(analyze(t)) for t in texts]
    n = 0
    for _ in range(copies):
        for body in bodies:
            groups = ["all"] + (["g50"] if n % 2 == 0 else []) + (["g1"] if n % 100 == 0 else [])
            writer.add_document(tantivy.Document(kind="chunk", chunk_id=f"c{n}",
                                                 document_id=f"d{n}", acl=ti.acl_terms(groups),
                                                 body=body))
            n += 1
    ti._commit(writer, horizon=1, collection_id=1)
    writer.wait_merging_threads()
    index.reload()
    searcher = ti.LexicalIndex.__new__(ti.LexicalIndex)  # searching needs only the index
    searcher._index = index
    return searcher


def measure(index: ti.LexicalIndex, queries: list[list[str]], groups: tuple[str, ...] | None,
            *, min_share: float) -> tuple[list[list[str]], float, float]:
    """Every query's hit ids, and p50/p95 in ms, with ``POST_FILTER_MIN_SHARE`` set as given."""
    ti.POST_FILTER_MIN_SHARE = min_share
    for terms in queries[:3]:  # warm up
        index.search(terms, groups=groups, top_k=TOP_K)
    found, ms = [], []
    for terms in queries:
        started = time.perf_counter()
        found.append([c for c, _ in index.search(terms, groups=groups, top_k=TOP_K) or []])
        ms.append((time.perf_counter() - started) * 1000)
    return found, float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR SciFact folder")
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.dataset / "corpus.jsonl").open()]
    asked = [json.loads(line)["text"] for line in (args.dataset / "queries.jsonl").open()]
    queries = [analyze(q) for q in asked[:args.queries]]
    rule = ti.POST_FILTER_MIN_SHARE
    with tempfile.TemporaryDirectory(prefix="verity-lexical-acl-") as tmp:
        started = time.perf_counter()
        index = build(Path(tmp), [f"{r['title']}\n{r['text']}" for r in rows], copies=args.copies)
        print(f"{len(rows) * args.copies:,} chunks indexed in {time.perf_counter() - started:.1f} s;"
              f" load average {os.getloadavg()[0]:.1f}; top {TOP_K}", flush=True)
        _, p50, p95 = measure(index, queries, None, min_share=rule)
        print(f"no filter: p50 {p50:.2f} / p95 {p95:.2f} ms")
        for group in ("g50", "g1"):
            inside, p50, p95 = measure(index, queries, (group,), min_share=float("inf"))
            print(f"{group}, filter inside tantivy: p50 {p50:.2f} / p95 {p95:.2f} ms")
            ruled, p50, p95 = measure(index, queries, (group,), min_share=rule)
            same = np.mean([a == b for a, b in zip(inside, ruled, strict=True)])
            print(f"{group}, current rule: p50 {p50:.2f} / p95 {p95:.2f} ms; same hits in the "
                  f"same order for {same:.0%} of queries")


if __name__ == "__main__":
    main()
