"""Vector search benchmark: float32 vs int8 vs binary+rescore, in FAISS and in pgvector.

Synthetic 384-d unit vectors shaped like all-MiniLM-L6-v2 sentence embeddings (a shared
mean direction, topic clusters and a decaying low-rank spectrum in a random basis, plus
isotropic noise), queries drawn from held-out vectors of the same distribution. For each
method: bytes per vector, build time, single-query p50/p95 latency with 1 thread and
with the default thread count, and recall@10 against exact float32 search.

Run from the repository root (see docs/BENCHMARKS.md for the numbers)::

    PYTHONPATH=. python bench/search.py --sizes 10k,100k,1M --pg-sizes 10k,100k
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from verity.backends.quantize import quantize_binary
from verity.backends.stores.faiss_index import FaissIndex, Manifest, map_npy
from verity.backends.stores.faiss_search import rescore_float

DIM = 384
TOP_K = 10
# The distribution, fitted to 4,000 all-MiniLM-L6-v2 embeddings of English paragraphs
# (docstrings of installed packages): see docs/BENCHMARKS.md for both sets of statistics.
MEAN_NORM = 0.42  # a shared mean direction: every pair of embeddings is a bit alike
SPECTRUM_DECAY = 0.35  # component k of every part has scale k ** -0.35 in a random basis
TOPICS, SUBTOPICS = 300, 30  # topic centres, and subtopic centres around each
TOPIC_SCALE, SUBTOPIC_SCALE, WITHIN_SCALE = 0.8, 0.7, 0.7
ZIPF = 0.5  # subtopic popularity ~ rank ** -0.5: a few crowded subtopics, many sparse ones


# --- Data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """The fixed parts of the distribution: mean, basis, spectrum, subtopic centres and weights."""

    mean: np.ndarray
    basis: np.ndarray
    scales: np.ndarray
    centres: np.ndarray
    weights: np.ndarray

    @classmethod
    def make(cls, seed: int) -> World:
        rng = np.random.default_rng(seed)
        mean = rng.normal(size=DIM)
        mean *= MEAN_NORM / np.linalg.norm(mean)
        basis, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
        scales = np.arange(1, DIM + 1) ** -SPECTRUM_DECAY
        scales /= np.linalg.norm(scales)
        topics = (rng.normal(size=(TOPICS, DIM)) * scales) @ basis.T * TOPIC_SCALE
        centres = np.repeat(topics, SUBTOPICS, axis=0) + (
            rng.normal(size=(TOPICS * SUBTOPICS, DIM)) * scales) @ basis.T * SUBTOPIC_SCALE
        weights = np.arange(1, TOPICS * SUBTOPICS + 1, dtype=np.float64) ** -ZIPF
        return cls(mean.astype(np.float32), basis.astype(np.float32), scales.astype(np.float32),
                   centres.astype(np.float32), weights / weights.sum())

    def sample(self, n: int, *, rng: np.random.Generator, block: int = 100_000) -> np.ndarray:
        """``n`` unit vectors, float32."""
        out = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, block):
            m = min(block, n - start)
            within = (rng.standard_normal((m, DIM), dtype=np.float32) * self.scales) @ self.basis.T
            x = self.mean + self.centres[rng.choice(len(self.centres), size=m, p=self.weights)]
            x += WITHIN_SCALE * within
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def describe(vectors: np.ndarray, *, queries: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
             sample: int = 4000) -> dict[str, float]:
    """Statistics to compare synthetic with real embeddings (``truth``: exact top-10 rows)."""
    nearest = np.einsum("qd,qkd->qk", queries, vectors[truth])
    x = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)]
    pairs = (x[: len(x) // 2] * x[len(x) // 2:]).sum(1)
    centred = x - x.mean(0)
    eig = np.linalg.svd(centred, compute_uv=False) ** 2
    eig /= eig.sum()
    balance = np.abs((x > 0).mean(0) - 0.5)
    return {"mean_norm": float(np.linalg.norm(x.mean(0))), "pair_cos_mean": float(pairs.mean()),
            "pair_cos_std": float(pairs.std()), "var_top10": float(eig[:10].sum()),
            "var_top50": float(eig[:50].sum()), "var_top100": float(eig[:100].sum()),
            "bit_imbalance": float(balance.mean()), "nn1_cos": float(nearest[:, 0].mean()),
            "nn10_cos": float(nearest[:, -1].mean())}


# --- Timing ---------------------------------------------------------------------------------


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Limit FAISS (OpenMP) and BLAS to ``n`` threads; ``None`` keeps the defaults."""
    import faiss

    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy's own BLAS threads stay as they are
        yield
    else:
        with threadpool_limits(n):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def latencies(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, *, warmup: int = 5,
              before: Callable[[], None] | None = None) -> tuple[np.ndarray, list[float]]:
    """Top-10 rows per query and the per-query milliseconds, one query at a time.

    ``before`` runs ahead of each timed query, outside the timing.
    """
    for q in queries[:warmup]:
        search(q)
    found, ms = [], []
    for q in queries:
        if before is not None:
            before()
        started = time.perf_counter()
        found.append(search(q))
        ms.append((time.perf_counter() - started) * 1000)
    return np.array([np.pad(f[:TOP_K], (0, TOP_K - len(f[:TOP_K])), constant_values=-1) for f in found]), ms


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / TOP_K for f, t in zip(found, truth, strict=True)]))


@dataclass
class Row:
    size: int
    backend: str
    method: str
    ram_bytes: float
    disk_bytes: float
    build_s: float
    recall: float = 0.0
    p50_1t: float = 0.0
    p95_1t: float = 0.0
    p50_default: float = 0.0
    p95_default: float = 0.0
    notes: list[str] = field(default_factory=list)


def measure(row: Row, search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
            truth: np.ndarray, *, args: argparse.Namespace, default_threads: bool = True,
            before: Callable[[], None] | None = None) -> Row:
    """Fill in recall and latencies: all queries on 1 thread, then some on the default threads."""
    with threads(1):
        found, ms = latencies(search, queries, before=before)
    row.recall = recall(found, truth)
    row.p50_1t, row.p95_1t = (float(v) for v in np.percentile(ms, [50, 95]))
    if default_threads and args.default_queries:
        _, ms = latencies(search, queries[: args.default_queries])
        row.p50_default, row.p95_default = (float(v) for v in np.percentile(ms, [50, 95]))
    print(f"  {row.backend:8} {row.method:34} recall@10 {row.recall:.3f}  p50 {row.p50_1t:8.2f} ms "
          f"(1 thread)  build {row.build_s:6.1f} s", flush=True)
    return row


# --- FAISS ----------------------------------------------------------------------------------


def faiss_float(corpus: np.ndarray) -> tuple[Any, float]:
    import faiss

    started = time.perf_counter()
    index = faiss.IndexFlatIP(DIM)
    index.add(corpus)
    return index, time.perf_counter() - started


def faiss_int8(corpus: np.ndarray) -> tuple[Any, float]:
    import faiss

    started = time.perf_counter()
    index = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(corpus[:100_000])
    index.add(corpus)
    return index, time.perf_counter() - started


def flat_searcher(index: Any) -> Callable[[np.ndarray], np.ndarray]:
    def search(q: np.ndarray) -> np.ndarray:
        found: np.ndarray = index.search(q.reshape(1, -1), TOP_K)[1][0]
        return found
    return search


def binary_rescore(corpus: np.ndarray, *, hnsw: bool, workdir: Path) -> tuple[FaissIndex, float]:
    """Verity's FaissIndex, built, saved and loaded back (int8 codes memory-mapped)."""
    manifest = Manifest(tenant="bench", collection="bench", collection_id=0, dim=DIM,
                        chunk_count=len(corpus), checksum="")
    started = time.perf_counter()
    built = FaissIndex.from_vectors(corpus, chunk_ids=[str(i) for i in range(len(corpus))],
                                    manifest=manifest, hnsw_threshold=0 if hnsw else len(corpus) + 1)
    build_s = time.perf_counter() - started
    path = workdir / ("hnsw" if hnsw else "flat")
    built.save(path)
    loaded = FaissIndex.load(path)
    assert loaded is not None
    return loaded, build_s


def binary_searcher(index: FaissIndex, *, oversample: int) -> Callable[[np.ndarray], np.ndarray]:
    """Binary candidates (``10 x oversample``), int8 rescoring, top 10."""
    def search(q: np.ndarray) -> np.ndarray:
        return index.shortlist(q, candidates=TOP_K * oversample, keep=TOP_K, ef_search=TOP_K * oversample)[0]
    return search


def binary_float_searcher(index: FaissIndex, vectors: np.ndarray, *, oversample: int, shortlist: int
                          ) -> Callable[[np.ndarray], np.ndarray]:
    """As :func:`binary_searcher`, then the int8 top ``10 x shortlist`` rescored with float16 vectors.

    The float16 vectors are a memory-mapped file, standing in for Postgres' ``halfvec``.
    """
    def search(q: np.ndarray) -> np.ndarray:
        rows, _ = index.shortlist(q, candidates=TOP_K * oversample, keep=TOP_K * shortlist,
                                  ef_search=TOP_K * oversample)
        return rescore_float(q, np.asarray(vectors[rows], dtype=np.float32), rows, top_k=TOP_K)[0]
    return search


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache (it must be re-read from disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_faiss(corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray, *, args: argparse.Namespace,
                workdir: Path) -> list[Row]:
    n = len(corpus)
    rows = []
    if "float" in args.methods:
        index, build_s = faiss_float(corpus)
        rows.append(measure(Row(n, "faiss", "float32 exact (IndexFlatIP)", 4 * DIM, 0, build_s),
                            flat_searcher(index), queries, truth, args=args))
        del index
    if "int8" in args.methods:
        index, build_s = faiss_int8(corpus)
        rows.append(measure(Row(n, "faiss", "int8 exact (IndexScalarQuantizer 8bit)", DIM, 0, build_s),
                            flat_searcher(index), queries, truth, args=args))
        del index
    if "flat" in args.methods:
        rows.extend(bench_binary(corpus, queries, truth, hnsw=False, args=args, workdir=workdir))
    if "hnsw" in args.methods and n <= args.hnsw_max:
        rows.extend(bench_binary(corpus, queries, truth, hnsw=True, args=args, workdir=workdir))
    return rows


def bench_binary(corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray, *, hnsw: bool,
                 args: argparse.Namespace, workdir: Path) -> list[Row]:
    n = len(corpus)
    index, build_s = binary_rescore(corpus, hnsw=hnsw, workdir=workdir)
    ram = index.ram_bytes() / n
    disk = sum(f.stat().st_size for f in (workdir / ("hnsw" if hnsw else "flat")).iterdir()) / n
    kind = "HNSW" if hnsw else "flat"
    rows = []
    for oversample in args.oversample:
        row = Row(n, "faiss", f"binary {kind} + int8 rescore, x{oversample}", ram, disk, build_s)
        rows.append(measure(row, binary_searcher(index, oversample=oversample), queries, truth, args=args))
    if hnsw:
        return rows
    if "float-rescore" in args.methods:
        rows.extend(bench_float_rescore(index, corpus, queries, truth, args=args, workdir=workdir,
                                        ram=ram, disk=disk, build_s=build_s))
    if "cold" in args.methods:
        rows.append(bench_cold(index, queries, truth, oversample=args.oversample[-1], ram=ram, disk=disk,
                               build_s=build_s, path=workdir / "flat" / "int8.npy", args=args))
    return rows


def bench_float_rescore(index: FaissIndex, corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray, *,
                        args: argparse.Namespace, workdir: Path, ram: float, disk: float, build_s: float
                        ) -> list[Row]:
    path = workdir / "float16.npy"
    np.save(path, corpus.astype(np.float16))
    vectors = map_npy(path)
    rows = []
    for oversample in args.float_oversample:
        method = f"binary flat + int8 top {TOP_K * args.shortlist} + float16 rescore, x{oversample}"
        row = Row(len(corpus), "faiss", method, ram, disk + 2 * DIM, build_s,
                  notes=["float16 vectors memory-mapped, standing in for Postgres halfvec"])
        search = binary_float_searcher(index, vectors, oversample=oversample, shortlist=args.shortlist)
        rows.append(measure(row, search, queries, truth, args=args))
    return rows


def bench_cold(index: FaissIndex, queries: np.ndarray, truth: np.ndarray, *, oversample: int,
               ram: float, disk: float, build_s: float, path: Path, args: argparse.Namespace) -> Row:
    """Latency when the int8 codes are not in the page cache.

    Before every query (untimed) the memory map is dropped, the file's pages are evicted
    and the file is mapped again: the page cache keeps pages that a process has mapped.
    """
    def remap() -> None:
        index.codes = np.zeros((0, DIM), dtype=np.int8)  # unmaps the old view
        evict(path)
        index.codes = map_npy(path)

    method = f"binary flat + int8 rescore, x{oversample}, cold int8"
    row = Row(len(index), "faiss", method, ram, disk, build_s)
    row.notes.append("int8.npy evicted from the page cache before each query (not timed)")
    row = measure(row, binary_searcher(index, oversample=oversample), queries, truth, args=args,
                  default_threads=False, before=remap)
    index.codes = map_npy(path)
    return row


# --- pgvector -------------------------------------------------------------------------------


PG_SETUP = """
DROP TABLE IF EXISTS bench_vectors;
CREATE TABLE bench_vectors (id integer PRIMARY KEY, embedding halfvec(384) NOT NULL,
                            embedding_bin bit(384) NOT NULL);
"""
PG_EXACT = "SELECT id FROM bench_vectors ORDER BY embedding <=> %(query)s LIMIT 10"
PG_BINARY_RESCORE = """
WITH candidates AS (
    SELECT id, embedding FROM bench_vectors ORDER BY embedding_bin <~> %(bits)s LIMIT %(candidates)s
)
SELECT id FROM candidates ORDER BY embedding <=> %(query)s LIMIT 10
"""


def pg_load(conn: Any, corpus: np.ndarray) -> float:
    from pgvector import Bit, HalfVector

    conn.execute(PG_SETUP)
    started = time.perf_counter()
    bits = quantize_binary(corpus)
    with conn.cursor() as cur, cur.copy(
            "COPY bench_vectors (id, embedding, embedding_bin) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "halfvec", "bit"])
        for i, (vector, code) in enumerate(zip(corpus, bits, strict=True)):
            copy.write_row((i, HalfVector(vector), Bit(np.unpackbits(code)[:DIM].astype(bool))))
    conn.execute("ANALYZE bench_vectors")
    return time.perf_counter() - started


def pg_sizes(conn: Any, n: int) -> tuple[float, float]:
    heap = conn.execute("SELECT pg_table_size('bench_vectors')").fetchone()[0]
    index = conn.execute(
        "SELECT coalesce(pg_relation_size(to_regclass('bench_vectors_bin_hnsw')), 0)").fetchone()[0]
    return heap / n, index / n


def pg_searcher(conn: Any, sql: str, *, oversample: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    from pgvector import Bit, HalfVector

    def search(q: np.ndarray) -> np.ndarray:
        params = {"query": HalfVector(q), "bits": Bit(q > 0), "candidates": TOP_K * oversample}
        return np.array([r[0] for r in conn.execute(sql, params, prepare=True).fetchall()])
    return search


def pg_measure(conn: Any, row: Row, search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
               truth: np.ndarray, *, args: argparse.Namespace) -> Row:
    """Like :func:`measure`, with Postgres' parallel workers off (1 thread) and then default."""
    conn.execute("SET max_parallel_workers_per_gather = 0")
    found, ms = latencies(search, queries)
    row.recall = recall(found, truth)
    row.p50_1t, row.p95_1t = (float(v) for v in np.percentile(ms, [50, 95]))
    conn.execute("RESET max_parallel_workers_per_gather")
    _, ms = latencies(search, queries[: args.default_queries])
    row.p50_default, row.p95_default = (float(v) for v in np.percentile(ms, [50, 95]))
    print(f"  {row.backend:8} {row.method:34} recall@10 {row.recall:.3f}  p50 {row.p50_1t:8.2f} ms "
          f"(1 worker)  build {row.build_s:6.1f} s", flush=True)
    return row


def bench_pgvector(conn: Any, corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray, *,
                   args: argparse.Namespace) -> list[Row]:
    n = len(corpus)
    load_s = pg_load(conn, corpus)
    heap, _ = pg_sizes(conn, n)
    rows = [pg_measure(conn, Row(n, "pgvector", "halfvec exact scan", heap, heap, load_s,
                                 notes=["build = COPY + ANALYZE"]),
                       pg_searcher(conn, PG_EXACT), queries, truth, args=args)]
    started = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("CREATE INDEX bench_vectors_bin_hnsw ON bench_vectors "
                 "USING hnsw (embedding_bin bit_hamming_ops)")
    build_s = time.perf_counter() - started
    heap, index = pg_sizes(conn, n)
    for oversample in args.oversample:
        conn.execute(f"SET hnsw.ef_search = {min(1000, max(40, TOP_K * oversample))}")
        row = Row(n, "pgvector", f"bit HNSW + halfvec rescore, x{oversample}", index, heap + index,
                  build_s, notes=["build = CREATE INDEX hnsw (bit_hamming_ops)"])
        rows.append(pg_measure(conn, row, pg_searcher(conn, PG_BINARY_RESCORE, oversample=oversample),
                               queries, truth, args=args))
    return rows


# --- Report ---------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = ("| N | backend | method | RAM B/vec | disk B/vec | build s | recall@10 | p50 ms 1t | "
            "p95 ms 1t | p50 ms def | p95 ms def |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        default = (f"{r.p50_default:.2f} | {r.p95_default:.2f}" if r.p50_default else "- | -")
        lines.append(f"| {r.size:,} | {r.backend} | {r.method} | {r.ram_bytes:,.0f} | {r.disk_bytes:,.0f} | "
                     f"{r.build_s:.1f} | {r.recall:.3f} | {r.p50_1t:.2f} | {r.p95_1t:.2f} | {default} |")
    return "\n".join(lines)


def ratios(rows: list[Row], *, target_recall: float) -> str:
    """Per size: the fastest binary+rescore setting that reaches the recall target, vs float32."""
    lines = []
    for n in sorted({r.size for r in rows if r.backend == "faiss"}):
        here = [r for r in rows if r.size == n and r.backend == "faiss"]
        exact = next((r for r in here if r.method.startswith("float32")), None)
        binary = [r for r in here if r.method.startswith("binary") and "cold" not in r.method]
        if exact is None or not binary:
            continue
        good = [r for r in binary if r.recall >= target_recall]
        best = min(good or binary, key=lambda r: r.p50_1t)
        lines.append(
            f"N={n:,}: {best.method} vs float32 exact: RAM/vector {exact.ram_bytes / best.ram_bytes:.1f}x "
            f"less ({best.ram_bytes:.0f} vs {exact.ram_bytes:.0f} B), p50 {exact.p50_1t / best.p50_1t:.1f}x "
            f"faster ({best.p50_1t:.2f} vs {exact.p50_1t:.2f} ms, 1 thread), recall@10 {best.recall:.3f}"
            + ("" if good else f" (no setting reached {target_recall})"))
    return "\n".join(lines)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="corpus sizes for FAISS")
    parser.add_argument("--pg-sizes", default="10k,100k", help="corpus sizes for pgvector ('' = none)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--default-queries", type=int, default=50,
                        help="queries timed again with the default thread count (0 = skip)")
    parser.add_argument("--methods", default="float,int8,flat,float-rescore,cold,hnsw",
                        help="FAISS methods to run: float,int8,flat,float-rescore,cold,hnsw")
    parser.add_argument("--oversample", default="10,20,40,80", help="binary candidates = 10 x this")
    parser.add_argument("--float-oversample", default="10,20,40",
                        help="oversample values for binary flat + int8 + float rescoring")
    parser.add_argument("--shortlist", type=int, default=4,
                        help="int8 winners per result that float rescoring sees (10 x this)")
    parser.add_argument("--hnsw-max", default="100k", help="largest N that also gets a binary HNSW index")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    args.pg_sizes = [parse_size(s) for s in args.pg_sizes.split(",") if s]
    args.oversample = [int(s) for s in args.oversample.split(",")]
    args.float_oversample = [int(s) for s in args.float_oversample.split(",") if s]
    args.methods = set(args.methods.split(","))
    args.hnsw_max = parse_size(args.hnsw_max)
    return args


def ground_truth(corpus: np.ndarray, queries: np.ndarray) -> np.ndarray:
    index, _ = faiss_float(corpus)
    truth: np.ndarray = index.search(queries, TOP_K)[1]
    return truth


def main(argv: list[str]) -> None:
    import faiss

    args = parse_args(argv)
    quantize_binary(np.ones((1, DIM), np.float32))  # import sentence-transformers before timing builds
    world = World.make(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    queries = world.sample(args.queries, rng=rng)
    print(f"faiss {faiss.__version__}, default threads {faiss.omp_get_max_threads()}, "
          f"{os.cpu_count()} CPUs; queries {args.queries}; top_k {TOP_K}", flush=True)
    rows: list[Row] = []
    pg_dir = Path(tempfile.mkdtemp(prefix="verity-bench-pg-"))
    pg = open_postgres(pg_dir) if args.pg_sizes else None
    for n in sorted(set(args.sizes) | set(args.pg_sizes)):
        corpus = world.sample(n, rng=np.random.default_rng(args.seed + n))
        truth = ground_truth(corpus, queries)
        shape = describe(corpus, queries=queries, truth=truth, rng=rng)
        print(f"N={n:,}: {json.dumps({k: round(v, 3) for k, v in shape.items()})}", flush=True)
        if n in args.sizes:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="verity-bench-") as tmp:
                rows.extend(bench_faiss(corpus, queries, truth, args=args, workdir=Path(tmp)))
            print(f"  (FAISS at N={n:,} took {time.perf_counter() - started:.0f} s)", flush=True)
        if pg is not None and n in args.pg_sizes:
            with pg.pool.connection() as conn:
                conn.autocommit = True
                rows.extend(bench_pgvector(conn, corpus, queries, truth, args=args))
        del corpus
    if pg is not None:
        pg.close()
    shutil.rmtree(pg_dir, ignore_errors=True)
    print("\n" + table(rows) + "\n\n" + ratios(rows, target_recall=0.97))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


def open_postgres(data_dir: Path) -> Any:
    from verity.backends.stores.database import Database
    from verity.core.settings import StoreSettings

    return Database(StoreSettings(pool_max_size=2), data_dir=data_dir).open()


if __name__ == "__main__":
    main(sys.argv[1:])
