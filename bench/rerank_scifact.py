"""SciFact: tune the reranker on the corpus, choose its weight on held-out pseudo-queries, report.

A thin wrapper over the CLI for the figures in docs/BENCHMARKS.md. Three steps,
each runnable alone (``all`` runs them in turn); the data directory is
``VERITY_DATA_DIR``, the collection ``scifact``:

* ``train``: ``verity tune reranker --collection scifact`` with the options given.
  It reads the corpus's chunks only, never a query or a judgement.
* ``weight``: chooses ``rerank.weight`` (and compares the fusions) without any
  evaluation query. Pseudo-queries from documents the model never trained on
  (its ``heldout.jsonl``; for a model saved without one, sentences of documents
  outside the chunks its training sampled, which its ``training_report.json``
  identifies) are made into a validation set: the collection is copied to
  ``scifact-heldout`` with those sentences removed from their documents, which are
  re-embedded, so that, like a real claim, a query is not in the corpus word for
  word. Hybrid + reranker runs on that copy for each weight; the best nDCG@10 wins
  (ties go to the smaller weight).
* ``eval``: ``verity eval retrieval --modes all`` on the 300 test queries with
  the chosen fusion and weight; writes ``retrieval.md`` and ``retrieval.json``.

Run from the repository root (``--weight`` skips the ``weight`` step's choice)::

    VERITY_DATA_DIR=... HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python bench/rerank_scifact.py all \\
        --out reports/scifact -- --max-pairs 6000 --max-length 128 --last-sentences
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from verity.core.settings import Settings  # noqa: E402
from verity.core.types import Document, ScoredChunk, Section, chunk_id, document_id  # noqa: E402

DATASET = REPO.parent / "shared" / "datasets" / "scifact"
COLLECTION = "scifact"
HELDOUT_COLLECTION = "scifact-heldout"
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))

log = logging.getLogger("bench")


def cli(*args: str) -> None:
    """Run ``verity ARGS`` in this process."""
    from verity.cli.main import app

    log.info("verity %s", " ".join(args))
    app(list(args), standalone_mode=False)


def copy_without_queries(settings: Settings, *, heldout: Sequence[Any]) -> tuple[dict[str, str],
                                                                               dict[str, dict[str, int]]]:
    """Copy the collection with the held-out queries removed from their documents; returns the
    validation queries and qrels (query -> its document's source)."""
    from ingest.splitter import embedding_text
    from verity.backends.embedders import build_embedder
    from verity.backends.stores.database import Database
    from verity.backends.stores.factory import build_store
    from verity.backends.stores.faiss_index import read_collection

    with Database(settings.store, data_dir=settings.data_dir) as db:
        store, embedder = build_store(db), build_embedder(settings.embedder, data_dir=settings.data_dir)
        _, ids, vectors = read_collection(db, tenant=store.tenant, collection=COLLECTION,
                                          batch_size=5000)
        vector_of = dict(zip(ids, vectors, strict=True))
        documents: dict[str, list[ScoredChunk]] = {}
        for hit in store.sample_chunks(collection=COLLECTION, limit=10_000_000):
            documents.setdefault(hit.chunk.document_id, []).append(hit)
        query_of: dict[str, list[Any]] = {}
        for group in heldout:
            query_of.setdefault(group.document_id, []).append(group)
        if HELDOUT_COLLECTION in {s.name for s in store.stats()}:
            store.delete_collection(HELDOUT_COLLECTION)
        store.ensure_collection(HELDOUT_COLLECTION, embed_model=embedder.name, embed_dim=embedder.dim)
        queries: dict[str, str] = {}
        qrels: dict[str, dict[str, int]] = {}
        for doc_id, hits in documents.items():
            hits.sort(key=lambda h: h.chunk.ordinal)
            groups = query_of.get(doc_id, [])
            title, texts = hits[0].title, [h.chunk.text for h in hits]
            for group in groups:
                title, texts, removed = _remove(group, title=title, texts=texts)
                if removed:
                    qid = f"h{len(queries)}"
                    queries[qid], qrels[qid] = group.query, {hits[0].source: 1}
            _write(store, embedder, hits, title=title, texts=texts,
                   vectors=None if groups else np.stack([vector_of[h.chunk.id] for h in hits]),
                   embedding_text=embedding_text)
    return queries, qrels


def _remove(group: Any, *, title: str, texts: list[str]) -> tuple[str, list[str], bool]:
    if group.kind in ("title", "heading"):
        return "", texts, True
    for i, text in enumerate(texts):
        if group.query in text:
            return title, [*texts[:i], " ".join(text.replace(group.query, " ", 1).split()),
                           *texts[i + 1:]], True
    return title, texts, False


def _write(store: Any, embedder: Any, hits: list[ScoredChunk], *, title: str, texts: list[str],
           vectors: np.ndarray | None, embedding_text: Any) -> None:
    source = hits[0].source
    new_id = document_id(collection=f"{store.tenant}/{HELDOUT_COLLECTION}", source=source)
    chunks = [replace(h.chunk, id=chunk_id(new_id, h.chunk.ordinal), document_id=new_id, text=t)
              for h, t in zip(hits, texts, strict=True)]
    if vectors is None:
        vectors = embedder.embed_documents([embedding_text(c, title=title) for c in chunks])
    document = Document(source=source, title=title, sections=(Section(text=" ".join(texts)),),
                        content_hash=hashlib.sha256("\x00".join([title, *texts]).encode()).hexdigest())
    store.write_document(collection=HELDOUT_COLLECTION, document=document, chunks=chunks,
                         embeddings=np.asarray(vectors, dtype=np.float32))


class MemoStore:
    """A store whose searches are remembered, so that settings can be compared on one run."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._seen: dict[Any, list[ScoredChunk]] = {}

    def search_dense(self, *, query: np.ndarray, **kwargs: Any) -> list[ScoredChunk]:
        key = ("dense", query.tobytes(), tuple(sorted(kwargs.items())))
        if key not in self._seen:
            self._seen[key] = self._store.search_dense(query=query, **kwargs)
        return self._seen[key]

    def search_lexical(self, **kwargs: Any) -> list[ScoredChunk]:
        key = ("bm25", tuple(sorted(kwargs.items())))
        if key not in self._seen:
            self._seen[key] = self._store.search_lexical(**kwargs)
        return self._seen[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)  # the rest of the Store protocol, not remembered


class MemoEmbedder:
    """An embedder whose query vectors are remembered: the same text gives the same bytes, so
    :class:`MemoStore` recognises the search (threaded BLAS can differ in the last bits)."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self.name = embedder.name
        self._vectors: dict[str, np.ndarray] = {}

    def embed_query(self, text: str) -> np.ndarray:
        if text not in self._vectors:
            self._vectors[text] = self._embedder.embed_query(text)
        return self._vectors[text]


class MemoReranker:
    """A reranker whose (query, chunk) scores are remembered."""

    def __init__(self, reranker: Any) -> None:
        self._reranker = reranker
        self.name = reranker.name
        self._scores: dict[tuple[str, str], float] = {}

    def warm_up(self) -> None:
        self._reranker.warm_up()

    def rerank(self, query: str, hits: Sequence[ScoredChunk], *, top_k: int) -> list[ScoredChunk]:
        new = [h for h in hits if (query, h.chunk.id) not in self._scores]
        for hit in self._reranker.rerank(query, new, top_k=len(new)) if new else []:
            self._scores[(query, hit.chunk.id)] = hit.scores["rerank"]
        scored = {i: self._scores[(query, h.chunk.id)] for i, h in enumerate(hits)}
        order = sorted(scored, key=lambda i: (-scored[i], i))[:top_k]
        return [replace(hits[i], score=scored[i], scores={**hits[i].scores, "rerank": scored[i]})
                for i in order]


def validation_queries(settings: Settings, model_dir: Path, *, n: int = 300) -> list[Any]:
    """Pseudo-queries from documents the model never trained on: its held-out groups, or, for a
    model saved without them, one sentence (first, inner or last) of each of ``n`` documents
    outside the chunks its training sampled (a title would be no claim)."""
    from verity.backends.stores.database import Database
    from verity.backends.stores.factory import build_store
    from verity.tuner.reranker import REPORT_NAME, TrainingGroup, load_heldout, pseudo_queries

    heldout = load_heldout(model_dir)
    if heldout:
        return heldout
    report = json.loads((model_dir / REPORT_NAME).read_text(encoding="utf-8"))
    with Database(settings.store, data_dir=settings.data_dir) as db:
        store = build_store(db)
        trained = {h.chunk.document_id for h in store.sample_chunks(
            collection=COLLECTION, limit=report["chunks_sampled"], seed=str(report["options"]["seed"]))}
        pool = [h for h in store.sample_chunks(collection=COLLECTION, limit=4 * n, seed="validation")
                if h.chunk.document_id not in trained]
    rng = random.Random(0)
    by_document: dict[str, list[Any]] = {}
    for query in pseudo_queries(pool, rng=rng, inner_sentences=True, last_sentences=True):
        if query.kind not in ("title", "heading"):
            by_document.setdefault(query.document_id, []).append(query)
    chosen = [rng.choice(queries) for queries in list(by_document.values())[:n]]
    return [TrainingGroup(query=q.text, kind=q.kind, positive=q.positive, negatives=(),
                          document_id=q.document_id) for q in chosen]


def choose_weight(settings: Settings, *, top_n: int) -> dict[str, Any]:
    """Validation nDCG@10 of hybrid and of each fusion and weight; the best weight."""
    from eval.retrieval import RerankSetup, evaluate_retrieval
    from verity.backends.embedders import build_embedder
    from verity.backends.rerankers import build_reranker, default_reranker_dir
    from verity.backends.stores.database import Database
    from verity.backends.stores.factory import build_store

    started = time.perf_counter()
    model = settings.rerank.model
    heldout = validation_queries(settings, Path(model) if model else
                                 default_reranker_dir(settings.data_dir))
    queries, qrels = copy_without_queries(settings, heldout=heldout)
    copied = time.perf_counter() - started
    cfg = settings.rerank.model_copy(update={"kind": "cross-encoder"})
    reranker = MemoReranker(build_reranker(cfg, data_dir=settings.data_dir))
    results: dict[str, float] = {}
    with Database(settings.store, data_dir=settings.data_dir) as db:
        store = MemoStore(build_store(db))
        embedder = MemoEmbedder(build_embedder(settings.embedder, data_dir=settings.data_dir))
        runs = [("replace", 1.0), ("rrf", 0.5)] + [("interpolate", w) for w in WEIGHTS]
        for fusion, weight in runs:
            result = evaluate_retrieval(
                store=store, embedder=embedder, queries=queries, qrels=qrels,
                collection=HELDOUT_COLLECTION, modes=["hybrid", "hybrid+rerank"], depth=100,
                retrieval=settings.retrieval,
                rerank=RerankSetup(reranker=reranker, top_n=top_n, fusion=fusion, weight=weight))
            results["hybrid"] = round(result.modes[0].metrics["ndcg@10"], 4)
            name = fusion if fusion != "interpolate" else f"interpolate {weight}"
            results[name] = round(result.modes[1].metrics["ndcg@10"], 4)
            log.info("validation nDCG@10: hybrid %.4f, %s %.4f", results["hybrid"], name, results[name])
    best = max(WEIGHTS, key=lambda w: (results[f"interpolate {w}"], -w))
    return {"queries": len(queries), "top_n": top_n, "ndcg@10": results, "weight": best,
            "seconds": {"copy": round(copied, 1), "total": round(time.perf_counter() - started, 1)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("step", choices=["train", "weight", "eval", "all"])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--out", type=Path, default=Path("reports") / "scifact")
    parser.add_argument("--top-n", type=int, default=30, help="candidates reranked")
    parser.add_argument("--weight", type=float, help="use this weight; skip choosing one")
    parser.add_argument("tune_args", nargs="*", help="after --: options of verity tune reranker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if args.step in ("train", "all"):
        cli("tune", "reranker", "--collection", COLLECTION, *args.tune_args)
    weight = args.weight
    if args.step in ("weight", "all") and weight is None:
        chosen = choose_weight(settings, top_n=args.top_n)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "weight.json").write_text(json.dumps(chosen, indent=2) + "\n", encoding="utf-8")
        log.info("chosen on %d held-out pseudo-queries: weight %s", chosen["queries"], chosen["weight"])
        weight = chosen["weight"]
    if args.step in ("eval", "all"):
        cli("eval", "retrieval", "--dataset", str(args.dataset), "--collection", COLLECTION,
            "--out", str(args.out), "--modes", "all", "--rerank-top-n", str(args.top_n),
            "--rerank-fusion", "interpolate", "--rerank-weight", str(weight if weight is not None
                                                                     else settings.rerank.weight))
    return 0


if __name__ == "__main__":
    sys.exit(main())
