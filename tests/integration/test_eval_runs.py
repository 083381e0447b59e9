"""The in-process orchestration of evaluation runs on the real embedded Postgres and the bundled
embedder, called as functions: ingestion comes in as a callable, as the command line passes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.calibration_runs import abstention_scores, calibrate_evaluator
from eval.datasets import DatasetError, load_beir
from eval.matrix import EvalConfig
from eval.qa_datasets import Passage, QADataset, QAExample
from eval.qa_runs import in_process_target, qa_answerers
from eval.retrieval_runs import evaluate_in_process
from eval.runs import Ingest
from ingest.beir import load_beir_corpus
from ingest.pipeline import IngestPipeline
from tests.helpers import write_beir
from tests.integration.test_eval_retrieval import DOCS, QRELS, QUERIES
from verity.answering.runtime import Runtime
from verity.core.settings import ChunkingSettings
from verity.core.types import Document, Section

pytestmark = pytest.mark.integration

PASSAGES = [
    Passage("bread", "Sourdough", "Sourdough bread is leavened by wild yeast and lactic acid "
                                  "bacteria, which also give it a sour taste."),
    Passage("chess", "Chess", "The Sicilian Defence answers 1.e4 with c5 and leads to sharp "
                              "positions."),
]
QA = QADataset("toy", [QAExample("bread", "What leavens sourdough bread?", ("wild yeast",))],
               list(PASSAGES))


def _recording(runtime: Runtime, calls: list[tuple[str, int]], load: str) -> Ingest:
    """An ingest callable over the real pipeline that records what it was asked to ingest."""

    def ingest(collection: str, chunking: ChunkingSettings) -> None:
        calls.append((collection, chunking.chunk_tokens))
        pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder, chunking=chunking)
        docs = (load_beir_corpus(Path(load), fingerprint=pipeline.fingerprint) if load else
                [Document(source=p.id, title=p.title, sections=(Section(p.text),),
                          content_hash=f"{p.id}-{chunking.chunk_tokens}") for p in PASSAGES])
        assert pipeline.ingest_documents(docs, collection=collection).ok

    return ingest


def test_retrieval_ingests_once_per_chunk_size_and_names_modes_after_configurations(
        retrieval_runtime: Runtime, collection: str, tmp_path: Path) -> None:
    dataset = write_beir(tmp_path / "tiny-beir", docs=list(DOCS), queries=list(QUERIES),
                         qrels=QRELS)
    calls: list[tuple[str, int]] = []
    configs = [EvalConfig(name="float", mode="dense-float32"), EvalConfig(name="bm25", mode="bm25"),
               EvalConfig(name="small", mode="dense-float32", chunk_tokens=32),
               EvalConfig(name="float-again", mode="dense-float32", depth=5)]
    result = evaluate_in_process(retrieval_runtime, load_beir(dataset), collection, configs,
                                 depth=10, oversample=4,
                                 ingest=_recording(retrieval_runtime, calls, str(dataset)))
    default_tokens = retrieval_runtime.settings.chunking.chunk_tokens
    assert calls == [(collection, default_tokens), (f"{collection}-c32", 32)]
    assert [m.mode for m in result.modes] == ["float", "bm25", "small", "float-again"]
    assert result.collection == collection and result.model == retrieval_runtime.embedder.name
    assert result.embed_ms and result.settings
    for mode in result.modes:
        assert mode.per_query["mrr@10"] == {"q-bees": 1.0, "q-chess": 1.0, "q-rust": 1.0}


def test_qa_answerers_decide_without_a_generator_and_rechunk_into_their_own_collection(
        retrieval_runtime: Runtime, collection: str) -> None:
    calls: list[tuple[str, int]] = []
    configs = [EvalConfig(name="rag", top_k=2), EvalConfig(name="small", chunk_tokens=64),
               EvalConfig(name="bm25", mode="bm25")]
    answerers = qa_answerers(retrieval_runtime, QA, collection, configs, generate=False,
                             ingest=_recording(retrieval_runtime, calls, ""))
    default_tokens = retrieval_runtime.settings.chunking.chunk_tokens
    assert calls == [(collection, default_tokens), (f"{collection}-c64", 64)]
    for name in ("rag", "small", "bm25"):
        answer = answerers[name]("What leavens sourdough bread?")
        assert answer.sources and answer.sources[0].document == "bread"
        assert answer.status != "answered" or answer.text == ""
    assert len(answerers["rag"]("What leavens sourdough bread?").sources) <= 2


def test_an_in_process_target_records_what_decides_its_answers(
        retrieval_runtime: Runtime, collection: str) -> None:
    target = in_process_target(retrieval_runtime, QA, collection,
                               [EvalConfig(name="rag"), EvalConfig(name="crag", crag=True)],
                               generate=False, ingest=_recording(retrieval_runtime, [], ""),
                               command="verity eval qa")
    assert target.generator is None and set(target.answerers) == {"rag", "crag"}
    assert target.info["generation"] == "off: abstention decisions only"
    assert target.info["embedder"] == retrieval_runtime.embedder.name
    assert len(set(target.cache_keys.values())) == 2


def test_calibration_scores_answerable_questions_and_needs_unanswerable_ones_for_abstention(
        retrieval_runtime: Runtime, collection: str) -> None:
    _recording(retrieval_runtime, [], "")(collection, ChunkingSettings())
    lines = calibrate_evaluator(retrieval_runtime, QA, collection, target=0.8)
    assert lines[0] == "1 questions, 1 with the answer in the retrieved chunks"
    assert lines[-1].startswith("VERITY_CRAG__UPPER=")
    with pytest.raises(DatasetError, match="toy marks no question unanswerable"):
        abstention_scores(retrieval_runtime, QA, collection)
