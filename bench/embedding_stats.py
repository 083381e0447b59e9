"""How close bench/search.py's synthetic vectors are to real all-MiniLM-L6-v2 embeddings.

Embeds English paragraphs (docstrings of the installed Python packages) with the bundled
embedder, draws as many synthetic vectors, and prints the same statistics for both:
the first 200 vectors are queries, the rest the corpus.

    PYTHONPATH=. python bench/embedding_stats.py --count 4000 --save /tmp/real.npy
    PYTHONPATH=. python bench/embedding_stats.py --embeddings /tmp/real.npy   # reuse them
"""

from __future__ import annotations

import argparse
import ast
import random
import sys
import sysconfig
from pathlib import Path

import numpy as np

from bench.search import DIM, World

QUERIES = 200


def paragraphs(count: int, *, seed: int = 0) -> list[str]:
    """``count`` distinct docstring paragraphs of 80 to 600 characters, in a seeded order."""
    files = sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*.py"))
    random.Random(seed).shuffle(files)
    found: set[str] = set()
    for path in files:
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                found.update(_paragraphs_of(ast.get_docstring(node) or ""))
        if len(found) > 3 * count:
            break
    ordered = sorted(found)
    random.Random(seed + 1).shuffle(ordered)
    return ordered[:count]


def _paragraphs_of(doc: str) -> list[str]:
    out = []
    for block in doc.split("\n\n"):
        text = " ".join(block.split())
        if 80 <= len(text) <= 600 and not text.startswith((">>>", "..", ":param", "Args")):
            out.append(text)
    return out


def embed(texts: list[str]) -> np.ndarray:
    from verity.backends.embedders import build_embedder
    from verity.core.settings import EmbedderSettings, default_data_dir

    embedder = build_embedder(EmbedderSettings(batch_size=64), data_dir=default_data_dir())
    return embedder.embed_documents(texts)


def stats(vectors: np.ndarray) -> dict[str, float]:
    """Shape statistics and binary-candidate recall; the first ``QUERIES`` rows are queries."""
    import faiss

    queries, corpus = vectors[:QUERIES], vectors[QUERIES:]
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(corpus), (2, 10_000))
    pairs = (corpus[a] * corpus[b]).sum(1)
    eig = np.linalg.svd(corpus - corpus.mean(0), compute_uv=False) ** 2
    eig /= eig.sum()
    sims = queries @ corpus.T
    exact = np.argsort(-sims, axis=1)[:, :10]
    top = -np.sort(-sims, axis=1)
    out = {"mean_norm": np.linalg.norm(corpus.mean(0)), "pair_cos_mean": pairs.mean(),
           "pair_cos_std": pairs.std(), "var_top10": eig[:10].sum(), "var_top50": eig[:50].sum(),
           "var_top100": eig[:100].sum(), "bit_imbalance": np.abs((corpus > 0).mean(0) - 0.5).mean(),
           "nn1_cos": top[:, 0].mean(), "nn10_cos": top[:, 9].mean()}
    index = faiss.IndexBinaryFlat(DIM)
    index.add(np.packbits(corpus > 0, axis=1))
    for k in (40, 100):
        _, found = index.search(np.packbits(queries > 0, axis=1), k)
        hits = [len(set(e) & set(f)) / 10 for e, f in zip(exact, found, strict=True)]
        out[f"binary_recall10_in_{k}"] = np.mean(hits)
    return {k: float(v) for k, v in out.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=4000, help="paragraphs to embed")
    parser.add_argument("--embeddings", type=Path, help="use these embeddings (.npy) instead")
    parser.add_argument("--save", type=Path, help="save the embeddings here")
    parser.add_argument("--seed", type=int, default=20261122, help="the synthetic world's seed")
    args = parser.parse_args(argv)
    real = np.load(args.embeddings) if args.embeddings else embed(paragraphs(args.count))
    if args.save:
        np.save(args.save, real)
    synthetic = World.make(args.seed).sample(len(real), rng=np.random.default_rng(args.seed + 2))
    measured = {"real": stats(real.astype(np.float32)), "synthetic": stats(synthetic)}
    print(f"| statistic (N = {len(real) - QUERIES:,} + {QUERIES} queries) | real MiniLM | synthetic |")
    print("|---|---|---|")
    for key in measured["real"]:
        print(f"| {key} | {measured['real'][key]:.3f} | {measured['synthetic'][key]:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
