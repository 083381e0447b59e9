"""Scale benchmark: one collection of N chunks on one machine, every search path and two peers.

Chunks are SciFact abstracts (``$DATA/scifact/corpus.jsonl``, ``DATA`` defaulting to
``../shared/datasets``) repeated with varied sources until there are N, one chunk per
document; their vectors come from the synthetic MiniLM-shaped ``World`` of
bench/search.py (query embedding is not measured). Every document is readable by group
``all``; half also by ``g50`` and one in a hundred by ``g1``, so the filters
``groups=("g50",)`` and ``groups=("g1",)`` keep 50% and 1% of the chunks.

Reported per size: the bulk write rate, index build time and size per component, p50/p95
latency at 1 and 8 concurrent queries of BM25 (the tantivy index, and PostgreSQL's postings
table up to ``--postgres-bm25-max`` chunks), dense float, binary-rescore and FAISS, and hybrid
(RRF over 50 + 50 candidates, as the pipeline does, with either BM25 as the lexical half),
with no filter and with both ACL filters, recall@10 of
the approximate dense stages against exact float, and the same for two peers: PostgreSQL
full-text search (tsvector + GIN + ts_rank_cd in a side table) and bm25s + FAISS flat in memory.

Run from the repository root (see docs/BENCHMARKS.md, "Scale")::

    PYTHONPATH=. python bench/scale.py --sizes 100k,1M --json scale.json
    PYTHONPATH=. python bench/scale.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path; the repository must.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

from bench.search import World, parse_size  # noqa: E402
from verity.answering.fusion import reciprocal_rank_fusion  # noqa: E402
from verity.backends.quantize import quantize_binary  # noqa: E402
from verity.backends.stores.database import Database  # noqa: E402
from verity.backends.stores.dense_index import DenseIndexes  # noqa: E402
from verity.backends.stores.faiss_index import FaissIndex, Manifest  # noqa: E402
from verity.backends.stores.pgvector_store import PgvectorStore  # noqa: E402
from verity.backends.stores.tantivy_index import LexicalIndexes  # noqa: E402
from verity.core.protocols import DocumentWrite  # noqa: E402
from verity.core.settings import FaissSettings, StoreSettings  # noqa: E402
from verity.core.types import (  # noqa: E402
    Chunk,
    DenseMode,
    Document,
    ScoredChunk,
    SearchFilter,
    chunk_id,
    document_id,
)

TOP_K = 10
ONE_BY_ONE = 2_000  # documents written one per transaction, for the write rate before
CANDIDATES = 50  # per retriever before fusion, RetrievalSettings.candidates' default
OVERSAMPLE = 10  # RetrievalSettings.oversample's default
COLLECTION = "scale"
FILTERS: dict[str, SearchFilter | None] = {
    "none": None, "acl 50%": SearchFilter(groups=("g50",)), "acl 1%": SearchFilter(groups=("g1",)),
}
Search = Callable[[int], list[str]]  # query number -> chunk ids, best first


@dataclass
class Corpus:
    """The chunks of one size: texts, sources, ACL groups, vectors, and the query set."""

    texts: list[str]
    sources: list[str]
    groups: list[tuple[str, ...]]
    vectors: np.ndarray
    queries: list[str]
    query_vectors: np.ndarray


def load_corpus(n: int, *, data: Path, queries: int, seed: int) -> Corpus:
    """N SciFact abstracts (repeated, each repetition a new source) with synthetic vectors."""
    rows = [json.loads(line) for line in (data / "scifact" / "corpus.jsonl").open()]
    texts, sources, groups = [], [], []
    for i in range(n):
        row = rows[i % len(rows)]
        texts.append(f"{row['title']}\n{row['text']}")
        sources.append(f"scifact/{row['_id']}/{i // len(rows)}")
        groups.append(("all",) + (("g50",) if i % 2 == 0 else ()) + (("g1",) if i % 100 == 0 else ()))
    asked = [json.loads(line)["text"] for line in (data / "scifact" / "queries.jsonl").open()]
    world = World.make(seed)
    vectors = world.sample(n, rng=np.random.default_rng(seed + n))
    query_vectors = world.sample(queries, rng=np.random.default_rng(seed + 1))
    return Corpus(texts, sources, groups, vectors, asked[:queries], query_vectors)


# --- Bulk writing ---------------------------------------------------------------------------


def writes(store: PgvectorStore, corpus: Corpus, rows: range, *, collection: str = COLLECTION
           ) -> list[DocumentWrite]:
    """Documents ``rows`` of the corpus, one chunk each, as ingestion hands them to the store."""
    out = []
    for i in rows:
        doc = document_id(collection=f"{store.tenant}/{collection}", source=corpus.sources[i])
        out.append(DocumentWrite(
            Document(source=corpus.sources[i], title="", sections=(),
                     content_hash=f"{corpus.sources[i]}@1", acl_groups=corpus.groups[i]),
            [Chunk(id=chunk_id(doc, 0), document_id=doc, ordinal=0, text=corpus.texts[i])],
            corpus.vectors[i:i + 1]))
    return out


def write_one_by_one(store: PgvectorStore, corpus: Corpus, *, documents: int) -> float:
    """The write path before bulk writes, for comparison: one document per transaction into a
    collection of its own whose HNSW index is kept up to date row by row; chunks a second."""
    name = f"{COLLECTION}-one-by-one"
    store.ensure_collection(name, embed_model="synthetic", embed_dim=corpus.vectors.shape[1])
    started = time.perf_counter()
    for w in writes(store, corpus, range(documents), collection=name):
        store.write_document(collection=name, document=w.document, chunks=w.chunks,
                             embeddings=w.embeddings)
    rate = documents / (time.perf_counter() - started)
    store.delete_collection(name)
    return rate


def load(store: PgvectorStore, db: Database, corpus: Corpus, *, batch: int) -> dict[str, float]:
    """Write the corpus through ``write_documents`` in batches, in one ``bulk_load``.

    The collection starts empty, so ``bulk_load`` builds its bit HNSW index after the writes.
    """
    n = len(corpus.texts)
    before = write_one_by_one(store, corpus, documents=min(n, ONE_BY_ONE))
    store.ensure_collection(COLLECTION, embed_model="synthetic", embed_dim=corpus.vectors.shape[1])
    started = time.perf_counter()
    with store.bulk_load(COLLECTION):
        for start in range(0, n, batch):
            rows = range(start, min(start + batch, n))
            results = store.write_documents(collection=COLLECTION,
                                            documents=writes(store, corpus, rows))
            failed = [r for r in results if not isinstance(r, str)]
            if failed:
                raise RuntimeError(f"{len(failed)} documents failed, the first: {failed[0]}")
        write_s = time.perf_counter() - started
    hnsw_s = time.perf_counter() - started - write_s
    with db.pool.connection() as conn:
        conn.execute("ANALYZE chunks, documents, chunk_postings")
    return {"write_s": write_s, "chunks_per_s": n / write_s, "bit_hnsw_s": hnsw_s,
            "one_by_one_chunks_per_s": before}


# --- Peers ----------------------------------------------------------------------------------

FTS_BUILD = """
DROP TABLE IF EXISTS bench_fts;
CREATE TABLE bench_fts AS
SELECT k.id, d.acl_groups, to_tsvector('english', k.text) AS tsv
FROM chunks k JOIN documents d ON d.id = k.document_id WHERE k.collection_id = {cid};
CREATE INDEX bench_fts_gin ON bench_fts USING gin (tsv);
ANALYZE bench_fts
"""
# Any query word may match (BM25 is a disjunction too): the plain query's '&' become '|'.
FTS_SEARCH = """
SELECT id FROM bench_fts,
     CAST(replace(plainto_tsquery('english', %(q)s)::text, '&', '|') AS tsquery) AS tq
WHERE tsv @@ tq AND (%(groups)s::text[] IS NULL OR acl_groups && %(groups)s::text[])
ORDER BY ts_rank_cd(tsv, tq) DESC LIMIT %(top_k)s
"""


def build_fts(db: Database, store: PgvectorStore) -> float:
    with db.pool.connection() as conn:
        conn.autocommit = True
        cid = store._collection(conn, COLLECTION)[0]
        started = time.perf_counter()
        for statement in FTS_BUILD.format(cid=cid).split(";"):
            conn.execute(statement)
        return time.perf_counter() - started


@dataclass
class Memory:
    """The in-memory peer: bm25s over the chunk texts and an exact FAISS inner-product index."""

    bm25: Any
    flat: Any
    ids: list[str]
    build_s: dict[str, float]

    @classmethod
    def build(cls, corpus: Corpus, ids: list[str]) -> Memory:
        import bm25s
        import faiss

        started = time.perf_counter()
        bm25 = bm25s.BM25()
        bm25.index(bm25s.tokenize(corpus.texts, stopwords="en", show_progress=False),
                   show_progress=False)
        bm25s_s = time.perf_counter() - started
        started = time.perf_counter()
        flat = faiss.IndexFlatIP(corpus.vectors.shape[1])
        flat.add(corpus.vectors)
        return cls(bm25, flat, ids, {"bm25s_s": bm25s_s, "faiss_flat_s": time.perf_counter() - started})

    def lexical(self, text: str, *, mask: np.ndarray | None, top_k: int) -> list[str]:
        import bm25s

        tokens = bm25s.tokenize([text], stopwords="en", show_progress=False)
        rows, scores = self.bm25.retrieve(tokens, k=top_k, weight_mask=mask, show_progress=False,
                                          n_threads=1)
        return [self.ids[r] for r, s in zip(rows[0], scores[0], strict=True) if s > 0]

    def dense(self, vector: np.ndarray, *, mask: np.ndarray | None, top_k: int) -> list[str]:
        import faiss

        params = None
        if mask is not None:
            # faiss' Python wrapper takes the bitmap array alone; its stubs show the C++ signature.
            bitmap = faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))  # type: ignore[call-arg, arg-type]
            params = faiss.SearchParameters(sel=bitmap)  # type: ignore[call-arg]
        _, rows = self.flat.search(vector[None, :], top_k, params=params)
        return [self.ids[r] for r in rows[0] if r >= 0]


# --- Measuring ------------------------------------------------------------------------------


@dataclass
class Row:
    """One engine under one filter: latency in ms at 1 and 8 queries in flight, and recall@10."""

    size: int
    engine: str
    filter: str
    p50_1: float = 0.0
    p95_1: float = 0.0
    p50_8: float = 0.0
    p95_8: float = 0.0
    recall: float | None = None


def timed(search: Search, queries: int, *, concurrency: int) -> tuple[list[list[str]], np.ndarray]:
    """Every query's result and its latency in ms, ``concurrency`` queries in flight at once."""
    def one(i: int) -> tuple[list[str], float]:
        started = time.perf_counter()
        found = search(i)
        return found, (time.perf_counter() - started) * 1000

    for i in range(min(3, queries)):  # warm up
        search(i)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        done = list(pool.map(one, range(queries)))
    return [d[0] for d in done], np.array([d[1] for d in done])


def recall_at_k(found: Sequence[list[str]], truth: Sequence[list[str]]) -> float:
    hits = [len(set(f[:TOP_K]) & set(t[:TOP_K])) / max(1, len(t[:TOP_K]))
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def measure(row: Row, search: Search, *, queries: int, truth: list[list[str]] | None
            ) -> tuple[Row, list[list[str]]]:
    found, ms = timed(search, queries, concurrency=1)
    row.p50_1, row.p95_1 = (float(v) for v in np.percentile(ms, [50, 95]))
    _, ms = timed(search, queries, concurrency=8)
    row.p50_8, row.p95_8 = (float(v) for v in np.percentile(ms, [50, 95]))
    if truth is not None:
        row.recall = recall_at_k(found, truth)
    shown = "" if row.recall is None else f"  recall@10 {row.recall:.3f}"
    print(f"  {row.engine:34} {row.filter:8} p50 {row.p50_1:8.2f} / p95 {row.p95_1:8.2f} ms; "
          f"8 in flight p50 {row.p50_8:8.2f} / p95 {row.p95_8:8.2f} ms{shown}", flush=True)
    return row, found


def ids(hits: Sequence[ScoredChunk]) -> list[str]:
    return [h.chunk.id for h in hits]


def store_searches(stores: dict[str, PgvectorStore], corpus: Corpus, faiss_index: FaissIndex,
                   where: SearchFilter | None, *, memory_store: PgvectorStore | None = None
                   ) -> dict[str, Search]:
    """Our engines' searches under one filter (FAISS has no filter: unfiltered only).

    ``stores`` holds a store per BM25 engine, by name (``tantivy``, ``postgres``); the first
    one also answers the dense searches through PostgreSQL. ``memory_store`` answers
    ``binary-rescore`` through the in-memory dense index (and BM25 through tantivy).
    """
    store = next(iter(stores.values()))

    def dense(mode: DenseMode, top_k: int = TOP_K) -> Search:
        return lambda i: ids(store.search_dense(collection=COLLECTION, query=corpus.query_vectors[i],
                                                top_k=top_k, mode=mode, oversample=OVERSAMPLE,
                                                where=where))

    def lexical(engine: str, top_k: int = TOP_K) -> Callable[[int], list[ScoredChunk]]:
        return lambda i: stores[engine].search_lexical(
            collection=COLLECTION, query=corpus.queries[i], top_k=top_k, where=where)

    def hybrid(engine: str, mode: DenseMode) -> Search:
        def search(i: int) -> list[str]:
            dense_hits = store.search_dense(collection=COLLECTION, query=corpus.query_vectors[i],
                                            top_k=CANDIDATES, mode=mode, oversample=OVERSAMPLE,
                                            where=where)
            return ids(reciprocal_rank_fusion([lexical(engine, CANDIDATES)(i), dense_hits],
                                              top_k=TOP_K))
        return search

    searches: dict[str, Search] = {
        "dense float (exact)": dense("float"),
        f"dense binary-rescore x{OVERSAMPLE}": dense("binary-rescore"),
    }
    for engine in stores:
        searches[f"bm25 {engine}"] = lexical_ids(lexical(engine))
        searches[f"hybrid float + bm25 {engine}"] = hybrid(engine, "float")
        searches[f"hybrid binary-rescore + bm25 {engine}"] = hybrid(engine, "binary-rescore")
    if memory_store is not None:
        searches.update(memory_searches(memory_store, corpus, where))
    if where is None:
        searches[f"dense FAISS binary+int8 x{OVERSAMPLE}"] = lambda i: [
            h.chunk_id for h in faiss_index.search(corpus.query_vectors[i], top_k=TOP_K,
                                                   oversample=OVERSAMPLE)]
    return searches


_HALVES = ThreadPoolExecutor(max_workers=2)
"""Runs hybrid's two halves side by side; one for the whole run, as the pipeline keeps one."""


def memory_searches(store: PgvectorStore, corpus: Corpus, where: SearchFilter | None
                    ) -> dict[str, Search]:
    """The in-memory dense index alone, and hybrid with it: its halves one after the other,
    and side by side in two threads."""

    def dense(i: int, top_k: int) -> list[ScoredChunk]:
        return store.search_dense(collection=COLLECTION, query=corpus.query_vectors[i],
                                  top_k=top_k, mode="binary-rescore", oversample=OVERSAMPLE,
                                  where=where)

    def lexical(i: int) -> list[ScoredChunk]:
        return store.search_lexical(collection=COLLECTION, query=corpus.queries[i],
                                    top_k=CANDIDATES, where=where)

    def sequential(i: int) -> list[str]:
        return ids(reciprocal_rank_fusion([lexical(i), dense(i, CANDIDATES)], top_k=TOP_K))

    def parallel(i: int) -> list[str]:
        halves = _HALVES.submit(lexical, i), _HALVES.submit(dense, i, CANDIDATES)
        return ids(reciprocal_rank_fusion([h.result() for h in halves], top_k=TOP_K))

    return {"dense memory index": lambda i: ids(dense(i, TOP_K)),
            "hybrid memory index + bm25 tantivy": sequential,
            "hybrid memory index + bm25 tantivy, halves in parallel": parallel}


def peer_searches(db: Database, memory: Memory, corpus: Corpus,
                  where: SearchFilter | None) -> dict[str, Search]:
    groups = None if where is None else list(where.groups or ())
    mask = None if where is None else np.array(
        [bool(set(g) & set(groups or ())) for g in corpus.groups])

    def fts(i: int) -> list[str]:
        with db.pool.connection() as conn:
            rows = conn.execute(FTS_SEARCH, {"q": corpus.queries[i], "groups": groups,
                                             "top_k": TOP_K}).fetchall()
        return [r[0] for r in rows]

    def memory_hybrid(i: int) -> list[str]:
        lexical = memory.lexical(corpus.queries[i], mask=mask, top_k=CANDIDATES)
        dense = memory.dense(corpus.query_vectors[i], mask=mask, top_k=CANDIDATES)
        return rrf_ids([lexical, dense])

    return {
        "peer: postgres FTS ts_rank_cd": fts,
        "peer: bm25s": lambda i: memory.lexical(corpus.queries[i], mask=mask, top_k=TOP_K),
        "peer: FAISS flat (exact)": lambda i: memory.dense(corpus.query_vectors[i], mask=mask,
                                                           top_k=TOP_K),
        "peer: bm25s + FAISS flat hybrid": memory_hybrid,
    }


def lexical_ids(search: Callable[[int], list[ScoredChunk]]) -> Search:
    return lambda i: ids(search(i))


def rrf_ids(rankings: Sequence[Sequence[str]]) -> list[str]:
    """Reciprocal rank fusion of the peers' id lists, as the pipeline fuses ours."""
    def scored(chunk: str) -> ScoredChunk:
        return ScoredChunk(chunk=Chunk(id=chunk, document_id="", ordinal=0, text=""), score=0.0,
                           source="")
    return ids(reciprocal_rank_fusion([[scored(c) for c in r] for r in rankings], top_k=TOP_K))


# --- Sizes ----------------------------------------------------------------------------------

TABLE_BYTES = """
SELECT pg_table_size('chunks'), pg_indexes_size('chunks'), pg_total_relation_size('documents'),
       pg_total_relation_size('chunk_postings'),
       coalesce(pg_table_size(to_regclass('bench_fts')), 0),
       coalesce(pg_relation_size(to_regclass('bench_fts_gin')), 0)
"""


def sizes(db: Database, store: PgvectorStore, *, faiss_index: FaissIndex, memory: Memory | None,
          lexical: Path, dense: DenseIndexes) -> dict[str, dict[str, Any]]:
    """Bytes per component and where they live (disk in Postgres, hot in its cache, or RAM)."""
    parts = store.index_bytes(COLLECTION)
    with db.pool.connection() as conn:
        row = conn.execute(TABLE_BYTES).fetchone()
    assert row is not None
    found = {
        "chunks table (heap + TOAST)": (row[0], "disk"),
        "chunks indexes (all)": (row[1], "disk"),
        "documents (with indexes)": (row[2], "disk"),
        "halfvec vectors (in chunks)": (parts["halfvec"], "disk, hot for float search"),
        "bit codes (in chunks)": (parts["bit_codes"], "disk"),
        "bit HNSW index": (parts["bit_hnsw"], "disk, hot for binary-rescore"),
        "BM25 postings (chunk_postings)": (parts["bm25_postings"], "disk"),
        "BM25 postings index": (parts["bm25_index"], "disk"),
        "tantivy index (lexical/)": (sum(f.stat().st_size for f in lexical.rglob("*")
                                         if f.is_file()), "disk, memory-mapped"),
        "chunk_postings (with indexes)": (row[3], "disk"),
        "dense memory index (bits + float16)": (dense.ram_bytes(), "RAM, each process"),
        "FAISS binary index": (faiss_index.ram_bytes(), "RAM"),
        "FAISS int8 codes": (faiss_index.codes.nbytes, "RAM (memory-mapped)"),
    }
    if memory is not None:
        found |= {
            "peer FTS tsvector table": (row[4], "disk"),
            "peer FTS GIN index": (row[5], "disk"),
            "peer bm25s score matrix": (sum(a.nbytes for a in memory.bm25.scores.values()
                                            if hasattr(a, "nbytes")), "RAM"),
            "peer FAISS flat float32": (memory.flat.ntotal * memory.flat.d * 4, "RAM"),
        }
    n = max(1, parts["chunks"])
    return {k: {"bytes": int(b), "per_chunk": int(b) / n, "where": w} for k, (b, w) in found.items()}


# --- Running --------------------------------------------------------------------------------


def wanted(engine: str, engines: Sequence[str]) -> bool:
    """Whether ``--engines`` (name prefixes; none: every engine) selects ``engine``."""
    return not engines or any(engine.startswith(e) for e in engines)


def bench_filter(stores: dict[str, PgvectorStore], db: Database, corpus: Corpus, *,
                 faiss_index: FaissIndex, memory: Memory | None, name: str, queries: int,
                 engines: Sequence[str] = (), memory_store: PgvectorStore | None = None
                 ) -> list[Row]:
    """Every engine under one filter; approximate dense stages are scored against exact float."""
    where = FILTERS[name]
    n = len(corpus.texts)
    rows: list[Row] = []
    truth: list[list[str]] | None = None
    for engine, search in store_searches(stores, corpus, faiss_index, where,
                                         memory_store=memory_store).items():
        if not wanted(engine, engines):
            continue
        approximate = engine.startswith("dense") and "exact" not in engine
        row, found = measure(Row(n, engine, name), search, queries=queries,
                             truth=truth if approximate else None)
        truth = found if engine == "dense float (exact)" else truth
        rows.append(row)
    for engine, search in (peer_searches(db, memory, corpus, where) if memory else {}).items():
        if not wanted(engine, engines):
            continue
        approximate = engine == "peer: FAISS flat (exact)"
        rows.append(measure(Row(n, engine, name), search, queries=queries,
                            truth=truth if approximate else None)[0])
    return rows


def bench_size(n: int, *, args: argparse.Namespace) -> dict[str, Any]:
    """Load one collection of ``n`` chunks into a fresh embedded Postgres and measure it."""
    corpus = load_corpus(n, data=args.data, queries=args.queries, seed=args.seed)
    pg_dir = Path(tempfile.mkdtemp(prefix="verity-scale-"))
    db = Database(StoreSettings(pool_max_size=9), data_dir=pg_dir).open()
    indexes = LexicalIndexes(db, root=pg_dir / "lexical")
    dense = DenseIndexes(db)
    try:
        store = PgvectorStore(db, tenant="bench")
        build = load(store, db, corpus, batch=args.batch)
        print(f"N={n:,}: wrote {build['chunks_per_s']:,.0f} chunks/s in bulk (one document per "
              f"transaction: {build['one_by_one_chunks_per_s']:,.0f}), bit HNSW built in "
              f"{build['bit_hnsw_s']:.1f} s", flush=True)
        started = time.perf_counter()
        if not indexes.wait_collection(tenant="bench", collection=COLLECTION, timeout_s=7200):
            raise RuntimeError("the tantivy index was not built within two hours")
        build["tantivy_s"] = time.perf_counter() - started
        stores = {"tantivy": PgvectorStore(db, tenant="bench", lexical=indexes)}
        if n <= args.postgres_bm25_max:  # the previous implementation: seconds a query beyond
            stores["postgres"] = store
        started = time.perf_counter()
        if not dense.wait_collection(tenant="bench", collection=COLLECTION, timeout_s=7200):
            raise RuntimeError("the dense index was not built within two hours")
        build["dense_memory_s"] = time.perf_counter() - started
        memory_store = PgvectorStore(db, tenant="bench", lexical=indexes, dense=dense)
        peers = wanted("peer", args.engines)
        if peers:
            build["fts_s"] = build_fts(db, store)
        chunk_ids = [chunk_id(document_id(collection=f"bench/{COLLECTION}", source=s), 0)
                     for s in corpus.sources]
        started = time.perf_counter()
        manifest = Manifest(tenant="bench", collection=COLLECTION, collection_id=0,
                            dim=corpus.vectors.shape[1], chunk_count=n, checksum="")
        faiss_index = FaissIndex.from_vectors(corpus.vectors, chunk_ids=chunk_ids,
                                              manifest=manifest,
                                              hnsw_threshold=FaissSettings().hnsw_threshold)
        build["faiss_s"] = time.perf_counter() - started
        memory = Memory.build(corpus, chunk_ids) if peers else None
        build |= memory.build_s if memory else {}
        rows = [row for name in FILTERS
                for row in bench_filter(stores, db, corpus, faiss_index=faiss_index,
                                        memory=memory, name=name, queries=args.queries,
                                        engines=args.engines, memory_store=memory_store)]
        return {"size": n, "build": build,
                "sizes": sizes(db, store, faiss_index=faiss_index, memory=memory,
                               lexical=pg_dir / "lexical", dense=dense),
                "rows": [asdict(r) for r in rows]}
    finally:
        dense.close()
        indexes.close()
        db.close()
        shutil.rmtree(pg_dir, ignore_errors=True)


def report(result: dict[str, Any]) -> str:
    """One size's figures as Markdown tables."""
    n = result["size"]
    lines = [f"### {n:,} chunks", "", "Build: " + ", ".join(
        f"{k} {v:,.1f}" for k, v in result["build"].items()), "",
             "| component | where | MB | bytes/chunk |", "|---|---|---:|---:|"]
    lines += [f"| {k} | {v['where']} | {v['bytes'] / 2**20:,.1f} | {v['per_chunk']:,.0f} |"
              for k, v in result["sizes"].items()]
    lines += ["", "| engine | filter | p50 ms | p95 ms | p50 ms (8 in flight) | p95 ms (8 in flight) "
              "| recall@10 vs exact |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        shown = "" if r["recall"] is None else f"{r['recall']:.3f}"
        lines.append(f"| {r['engine']} | {r['filter']} | {r['p50_1']:.1f} | {r['p95_1']:.1f} | "
                     f"{r['p50_8']:.1f} | {r['p95_8']:.1f} | {shown} |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="100k,1M", help="collection sizes, e.g. 100k,1M")
    parser.add_argument("--smoke", action="store_true", help="2k chunks and 10 queries (CI)")
    parser.add_argument("--queries", type=int, default=50, help="SciFact queries per engine")
    parser.add_argument("--batch", type=int, default=1000, help="documents per write transaction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres-bm25-max", type=parse_size, default=150_000,
                        help="largest size at which PostgreSQL's BM25 (the previous default) runs")
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("DATA", REPO.parent / "shared" / "datasets")))
    parser.add_argument("--json", type=Path, help="write every figure here too")
    parser.add_argument("--engines", default="",
                        help="comma-separated engine name prefixes to measure, e.g. 'dense' "
                             "(default: all)")
    args = parser.parse_args(argv)
    args.sizes = [2_000] if args.smoke else [parse_size(s) for s in args.sizes.split(",")]
    args.queries = min(args.queries, 10) if args.smoke else args.queries
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    quantize_binary(np.ones((1, 8), np.float32))  # its first call imports torch: not a write cost
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.queries} queries; "
          f"top_k {TOP_K}", flush=True)
    results = [bench_size(n, args=args) for n in args.sizes]
    print("\n\n".join(report(r) for r in results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
