"""Rerankers over real models: a cross-encoder tuned here for a few steps on this repo's
docs, and the llm-judge against the local llama.cpp server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.pipeline import IngestPipeline
from tests.conftest import DOCS, make_settings
from verity.answering.runtime import start_generator
from verity.backends.embedders import LocalEmbedder
from verity.backends.llama_server import LlamaCppServer
from verity.backends.models import resolve_embedder
from verity.backends.rerankers import (
    CrossEncoderReranker,
    LlmJudgeReranker,
    build_reranker,
    default_reranker_dir,
)
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.prompts import PromptLibrary
from verity.core.settings import BUNDLED_EMBEDDER, ChunkingSettings, LLMSettings, RerankSettings
from verity.core.types import Chunk, ScoredChunk
from verity.tuner.reranker import REPORT_NAME, TuneOptions, load_heldout, tune_reranker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = TuneOptions(max_pairs=16, negatives=1, heldout=4, batch_groups=4, max_length=96, depth=10)


@pytest.fixture(scope="module")
def docs_collection(store: PgvectorStore, embedder: LocalEmbedder) -> str:
    pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
    assert pipeline.run([DOCS], collection="rerank-docs").ok
    return "rerank-docs"


@pytest.fixture(scope="module")
def tuned(store: PgvectorStore, embedder: LocalEmbedder, docs_collection: str,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A data dir holding a reranker tuned for two steps on the docs (a few seconds)."""
    data_dir = tmp_path_factory.mktemp("rerank-data")
    report = tune_reranker(store, embedder, collection=docs_collection, options=TINY,
                           base_model=resolve_embedder(BUNDLED_EMBEDDER),
                           out=default_reranker_dir(data_dir))
    return data_dir, report


def _hit(i: int, text: str) -> ScoredChunk:
    return ScoredChunk(chunk=Chunk(id=f"c{i}", document_id=f"d{i}", ordinal=0, text=text),
                       score=0.0, source=f"d{i}.md", scores={"rrf": 0.0})


def test_tuning_saves_a_model_and_its_report(tuned: tuple[Path, dict[str, Any]]) -> None:
    data_dir, report = tuned
    saved = json.loads((default_reranker_dir(data_dir) / REPORT_NAME).read_text())
    assert saved == report
    assert report["source_collection"] == "rerank-docs"
    assert report["pairs"] == 16 and report["groups"] == 8 and report["steps"] == 2
    assert len(report["loss_curve"]) == 2 and report["heldout"]["queries"] >= 1
    assert 0.0 < report["heldout"]["mrr_after"] <= 1.0
    assert not list(default_reranker_dir(data_dir).parent.glob(".*partial"))
    heldout = load_heldout(default_reranker_dir(data_dir))
    assert len(heldout) == report["heldout"]["queries"]
    assert all(len(g.negatives) == TINY.negatives for g in heldout)


def test_cross_encoder_loads_the_tuned_model_by_default(
    tuned: tuple[Path, dict[str, Any]], store: PgvectorStore, docs_collection: str
) -> None:
    data_dir, _ = tuned
    reranker = build_reranker(RerankSettings(kind="cross-encoder", max_length=96),
                              data_dir=data_dir)
    assert isinstance(reranker, CrossEncoderReranker)
    question = "How do I configure the database?"
    hits = store.search_lexical(collection=docs_collection, query=question, top_k=6)
    ranked = reranker.rerank(question, hits, top_k=3)
    assert len(ranked) == 3 and {h.chunk.id for h in ranked} <= {h.chunk.id for h in hits}
    assert all(0.0 <= h.scores["rerank"] <= 1.0 and "bm25" in h.scores for h in ranked)
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)


@pytest.fixture(scope="module")
def judge_server(data_dir: Path) -> Iterator[LlamaCppServer]:
    """A model server that returns log-probabilities (the shared one does not: it reads
    prompts faster without them)."""
    with LlamaCppServer(LLMSettings(), data_dir=data_dir, logprobs=True) as server:
        yield server


def test_the_default_server_reads_prompts_without_logits_for_every_token(
    llm_server: LlamaCppServer, judge_server: LlamaCppServer,
) -> None:
    def logprobs(server: LlamaCppServer) -> int:
        return httpx.post(f"{server.base_url}/chat/completions", timeout=180, json={
            "model": server.model_name, "max_tokens": 1, "logprobs": True, "top_logprobs": 2,
            "messages": [{"role": "user", "content": "Say yes."}]}).status_code

    assert logprobs(llm_server) >= 400  # refused: no logits kept for the prompt
    assert logprobs(judge_server) == 200


def test_a_local_llm_judge_gets_a_server_that_returns_log_probabilities(data_dir: Path) -> None:
    settings = make_settings(data_dir, rerank=RerankSettings(kind="llm-judge"))
    with ExitStack() as stack:
        _, server = start_generator(settings, stack)
        assert server is not None
        r = httpx.post(f"{server.base_url}/chat/completions", timeout=180, json={
            "model": server.model_name, "max_tokens": 1, "logprobs": True, "top_logprobs": 2,
            "messages": [{"role": "user", "content": "Say yes."}]})
        assert r.status_code == 200, r.text


def test_llm_judge_scores_probabilities_and_prefers_the_relevant_passage(
    judge_server: LlamaCppServer,
) -> None:
    # One request at a time, with a generous timeout: the test machine's CPU is shared.
    settings = RerankSettings(kind="llm-judge", model=judge_server.model_name, batch_size=1,
                              timeout_s=180)
    judge = LlmJudgeReranker(settings,
                             base_url=judge_server.base_url, prompts=PromptLibrary.load())
    relevant = _hit(0, "Scurvy is caused by a lack of vitamin C. Eating citrus fruit such as "
                       "lemons and limes prevents scurvy.")
    irrelevant = _hit(1, "The quarterly sales report shows revenue growth in the retail "
                         "division of the company.")
    ranked = judge.rerank("What prevents scurvy?", [irrelevant, relevant], top_k=2)
    assert not judge.use_completions  # llama.cpp returns log-probabilities for chat
    assert all(0.0 <= h.score <= 1.0 for h in ranked)
    assert ranked[0].chunk.id == "c0" and ranked[0].score > ranked[1].score
