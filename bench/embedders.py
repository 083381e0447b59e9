"""The embedder backends side by side: torch float32, torch auto (bfloat16 where native),
onnx float32 and onnx int8, on the bundled all-MiniLM-L6-v2.

Embeds the first SciFact abstracts (title and text, as ingestion embeds them, in one call
of up to 512 texts with the configured batch size of 64) and times single queries, all
in one process, backends taking turns round by round so load from other work falls on
each alike. Prints docs/s, query p50, each backend's cosine agreement with torch float32
and the speed-ups over torch float32.

    PYTHONPATH=. python bench/embedders.py --data ../shared/datasets/scifact --docs 500

``--backends 'onnx int8'`` times only the named ones (cosines then need ``torch float32``
among them, and are left out otherwise); ``--docs 0`` times single queries only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from verity.backends.embedders import LocalEmbedder, build_embedder
from verity.core.settings import EmbedderSettings

BACKENDS = {
    "torch float32": EmbedderSettings(backend="torch", precision="float32"),
    "torch auto": EmbedderSettings(backend="torch", precision="auto"),
    "onnx float32": EmbedderSettings(backend="onnx", precision="float32"),
    "onnx int8": EmbedderSettings(backend="onnx", precision="int8"),
}
INGEST_BATCH = 512  # texts per embed_documents call in IngestPipeline


def load(data: Path, *, docs: int, queries: int) -> tuple[list[str], list[str]]:
    """The first ``docs`` abstracts as ingestion embeds them, and the first ``queries`` claims."""
    with (data / "corpus.jsonl").open() as f:
        records = [json.loads(line) for line, _ in zip(f, range(docs), strict=False)]
    with (data / "queries.jsonl").open() as f:
        claims = [json.loads(line)["text"] for line, _ in zip(f, range(queries), strict=False)]
    return [f"{r['title']}\n{r['text']}" if r.get("title") else r["text"] for r in records], claims


def time_documents(embedder: LocalEmbedder, texts: list[str]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = [embedder.embed_documents(texts[i:i + INGEST_BATCH])
               for i in range(0, len(texts), INGEST_BATCH)] or [np.zeros((0, embedder.dim))]
    return time.perf_counter() - started, np.concatenate(vectors)


def time_queries(embedder: LocalEmbedder, claims: list[str]) -> list[float]:
    out = []
    for claim in claims:
        started = time.perf_counter()
        embedder.embed_query(claim)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/scifact"))
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="document passes per backend")
    parser.add_argument("--backends", type=lambda s: s.split(","), default=list(BACKENDS),
                        help=f"comma-separated, from: {', '.join(BACKENDS)}")
    args = parser.parse_args()
    if unknown := set(args.backends) - set(BACKENDS):
        parser.error(f"unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    texts, claims = load(args.data, docs=args.docs, queries=args.queries)
    with tempfile.TemporaryDirectory(prefix="verity-bench-onnx-") as tmp:
        embedders = {name: build_embedder(BACKENDS[name], data_dir=Path(tmp))
                     for name in args.backends}
        for embedder in embedders.values():  # loads, and exports the ONNX models (untimed)
            embedder.embed_documents(texts[:8] or claims[:8])
            embedder.embed_query(claims[0])
        seconds = {name: 0.0 for name in embedders}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):
            for name, embedder in embedders.items():
                took, vectors[name] = time_documents(embedder, texts)
                seconds[name] += took
        p50 = {name: statistics.median(time_queries(e, claims)) for name, e in embedders.items()}
        report(embedders, seconds=seconds, p50=p50, vectors=vectors, total=args.rounds * len(texts))


def report(embedders: dict[str, LocalEmbedder], *, seconds: dict[str, float],
           p50: dict[str, float], vectors: dict[str, np.ndarray], total: int) -> None:
    base = "torch float32" if "torch float32" in embedders else next(iter(embedders))
    cosine = "torch float32" in embedders and total > 0
    print(f"{'backend':<15} {'precision':<9} {'docs/s':>7} {'x docs/s':>8} {'query p50 ms':>12} "
          f"{'x p50':>6} {'cos mean':>8} {'cos min':>8}   (x: against {base})")
    for name, embedder in embedders.items():
        rate = total / seconds[name] if seconds[name] else 0.0
        ratio = seconds[base] / seconds[name] if seconds[name] else 0.0
        cosines = (vectors[name] * vectors[base]).sum(axis=1) if cosine else np.full(1, np.nan)
        print(f"{name:<15} {embedder.precision:<9} {rate:>7.1f} {ratio:>8.2f} {p50[name]:>12.2f} "
              f"{p50[base] / p50[name]:>6.2f} {cosines.mean():>8.4f} {cosines.min():>8.4f}")


if __name__ == "__main__":
    main()
