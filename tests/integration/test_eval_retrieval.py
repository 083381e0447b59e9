"""The retrieval evaluation end to end on a tiny generated BEIR dataset, on the real
embedded Postgres and the bundled embedder: in process, and as ``verity eval retrieval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.archive import ReportFolder
from eval.datasets import load_beir
from eval.retrieval import MODES as ALL_MODES
from eval.retrieval import (
    ModeResult,
    RerankSetup,
    evaluate_retrieval,
    faiss_int8_searcher,
    mode_index_bytes,
)
from ingest.beir import load_beir_corpus
from ingest.pipeline import IngestPipeline
from tests.helpers import write_beir
from verity.backends.embedders import LocalEmbedder
from verity.backends.models import resolve_embedder
from verity.backends.rerankers import CrossEncoderReranker
from verity.backends.stores.database import Database
from verity.backends.stores.faiss_index import FaissAccelerator
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.settings import BUNDLED_EMBEDDER, ChunkingSettings, FaissSettings, RerankSettings
from verity.tuner.reranker import new_cross_encoder

pytestmark = pytest.mark.integration

DOCS = [
    {"_id": "volcano", "title": "Volcanic eruptions in Iceland",
     "text": "Basaltic lava flows from fissure vents on the Reykjanes peninsula."},
    {"_id": "bees", "title": "Honeybee colony collapse disorder",
     "text": "Worker bees vanish from the hive, leaving the queen and brood behind."},
    {"_id": "chess", "title": "Opening theory in chess",
     "text": "The Sicilian Defence answers 1.e4 with c5 and leads to sharp positions."},
    {"_id": "rust", "title": "Memory safety in the Rust programming language",
     "text": "The borrow checker rejects programs with dangling references at compile time."},
    {"_id": "bread", "title": "Sourdough bread fermentation",
     "text": "Wild yeast and lactic acid bacteria leaven the dough and sour its taste."},
]
# Each query is a document's title; "bees" also has a weaker second judgment.
QUERIES = [{"_id": "q-bees", "text": "Honeybee colony collapse disorder"},
           {"_id": "q-chess", "text": "Opening theory in chess"},
           {"_id": "q-rust", "text": "Memory safety in the Rust programming language"}]
QRELS = "query-id\tcorpus-id\tscore\nq-bees\tbees\t2\nq-bees\tbread\t0\nq-chess\tchess\t1\nq-rust\trust\t1\n"
MODES = ["dense-float32", "dense-binary-rescore"]
CLI_MODES = ["bm25", "dense-float32", "dense-int8", "dense-binary-rescore", "hybrid"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tiny-beir", docs=list(DOCS), queries=list(QUERIES), qrels=QRELS)


def test_title_queries_retrieve_their_document_first(
    dataset: Path, store: PgvectorStore, embedder: LocalEmbedder, collection: str
) -> None:
    pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
    first = pipeline.ingest_documents(load_beir_corpus(dataset, fingerprint=pipeline.fingerprint),
                                      collection=collection)
    assert first.ok and sorted(first.added) == sorted(d["_id"] for d in DOCS)
    again = pipeline.ingest_documents(load_beir_corpus(dataset, fingerprint=pipeline.fingerprint),
                                      collection=collection)
    assert again.chunks_written == 0 and len(again.unchanged) == len(DOCS)

    data = load_beir(dataset)
    result = evaluate_retrieval(store=store, embedder=embedder, queries=data.queries,
                                qrels=data.qrels, collection=collection, modes=MODES, depth=10,
                                oversample=4)
    assert [m.mode for m in result.modes] == MODES
    for mode in result.modes:
        assert mode.per_query["mrr@10"] == {"q-bees": 1.0, "q-chess": 1.0, "q-rust": 1.0}
        assert mode.metrics["ndcg@10"] == pytest.approx(1.0)
        assert mode.metrics["recall@10"] == mode.metrics["recall@100"] == 1.0
        assert mode.docs_per_query == len(DOCS)  # one chunk each, all retrieved at depth 10
        assert all(ms > 0 for ms in mode.search_ms.values())


@pytest.fixture(scope="module")
def untrained_reranker(tmp_path_factory: pytest.TempPathFactory) -> CrossEncoderReranker:
    """A real cross-encoder: the bundled MiniLM with a fresh (seeded, untrained) head."""
    path = tmp_path_factory.mktemp("untrained-reranker")
    new_cross_encoder(resolve_embedder(BUNDLED_EMBEDDER), max_length=64, seed=0).save(str(path))
    return CrossEncoderReranker(RerankSettings(kind="cross-encoder", model=str(path)),
                                data_dir=path)


def test_every_mode_runs_on_the_real_backends(
    dataset: Path, store: PgvectorStore, embedder: LocalEmbedder, collection: str,
    database: Database, tmp_path: Path, untrained_reranker: CrossEncoderReranker,
) -> None:
    pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
    assert pipeline.ingest_documents(load_beir_corpus(dataset, fingerprint=pipeline.fingerprint),
                                     collection=collection).ok
    accelerator = FaissAccelerator(database, data_dir=tmp_path, settings=FaissSettings())
    int8 = faiss_int8_searcher(accelerator, store, collection=collection)
    data = load_beir(dataset)

    def run(weight: float) -> dict[str, ModeResult]:
        rerank = RerankSetup(reranker=untrained_reranker, top_n=3, fusion="interpolate",
                             weight=weight)
        sizes = mode_index_bytes(ALL_MODES, store=store, collection=collection,
                                 int8_bytes={"int8_codes": 5 * 384}, reranker_bytes=1)
        result = evaluate_retrieval(store=store, embedder=embedder, queries=data.queries,
                                    qrels=data.qrels, collection=collection, modes=list(ALL_MODES),
                                    depth=10, oversample=4, rerank=rerank, int8=int8,
                                    index_bytes=sizes)
        return {m.mode: m for m in result.modes}

    modes = run(0.0)
    assert list(modes) == list(ALL_MODES)
    for name in ["dense-float32", "dense-int8", "dense-binary-rescore", "hybrid"]:
        assert modes[name].per_query["mrr@10"] == {"q-bees": 1.0, "q-chess": 1.0, "q-rust": 1.0}
    for mode in modes.values():
        assert mode.docs_per_query == len(DOCS) or mode.mode == "bm25"
        assert mode.index_total_bytes > 0 and all(ms > 0 for ms in mode.search_ms.values())
    # with no weight on the reranker, reranking changes nothing; with all of it, the
    # untrained head decides the top three and the first stage's tail stays behind them
    assert modes["hybrid+rerank"].per_query == modes["hybrid"].per_query
    reranked = run(1.0)["hybrid+rerank"]
    assert reranked.metrics["recall@10"] == 1.0 and reranked.docs_per_query == len(DOCS)
    assert modes["dense-binary-rescore"].index_bytes.keys() == {"bit_hnsw", "halfvec"}


@pytest.mark.slow
def test_cli_writes_reports_and_reingests_nothing(dataset: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERITY_")}
    env.update(VERITY_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1",
               VERITY_EVAL__REPORTS_DIR=str(tmp_path / "saved"))
    out = tmp_path / "reports"
    args = [sys.executable, "-m", "verity.cli", "eval", "retrieval", "--dataset", str(dataset),
            "--collection", "tiny", "--modes", ",".join(CLI_MODES), "--depth", "10"]
    # The first run names its folder; the second saves into a new one under the reports folder.
    runs = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL) for command in (args + ["--out", str(out)], args)]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    [saved] = ReportFolder(tmp_path / "saved").list_reports()
    assert saved.name.startswith("retrieval-tiny-beir-") and saved.name.endswith("/retrieval")
    assert saved.metrics["bm25"]["mrr@10"] == 1.0 and saved.name in runs[1].stdout
    assert "5 added" in runs[0].stderr and "0 chunks written" in runs[1].stderr
    assert "5 unchanged" in runs[1].stderr
    report = json.loads((out / "retrieval.json").read_text())
    assert report["provenance"]["dataset_sha256"] == load_beir(dataset).sha256
    assert [m["mode"] for m in report["modes"]] == CLI_MODES
    assert [m["metrics"]["mrr@10"] for m in report["modes"]] == [1.0] * len(CLI_MODES)
    assert all(sum(m["index_bytes"].values()) > 0 for m in report["modes"])
    assert report["setup"]["retrieval"]["fusion"] == "rrf"
    assert "dense-binary-rescore" in (out / "retrieval.md").read_text()


def test_cli_names_the_missing_file(tmp_path: Path, dataset: Path) -> None:
    (dataset / "queries.jsonl").unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERITY_")}
    env.update(VERITY_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "verity.cli", "eval", "retrieval", "--dataset",
                          str(dataset), "--collection", "tiny", "--out", str(tmp_path / "r")],
                         env=env, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "missing queries.jsonl" in run.stderr
