"""The rerank stage of ``RagPipeline.retrieve`` over the real store and embedder."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ingest.pipeline import IngestPipeline
from tests.fakes import overlap, rerank_app
from tests.helpers import serve_app
from verity.answering.pipeline import RagPipeline, Timer
from verity.backends.embedders import LocalEmbedder
from verity.backends.rerankers import RemoteRerankReranker, apply_scores, rerank_text
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.core.prompts import PromptLibrary
from verity.core.protocols import Reranker
from verity.core.settings import ChunkingSettings, RerankSettings, RetrievalSettings
from verity.core.types import Document, ScoredChunk, Section

pytestmark = pytest.mark.integration

QUESTION = "What did sailors eat to prevent scurvy?"
NOTES = {
    "scurvy.md": "Scurvy is a disease caused by a lack of vitamin C. It makes gums bleed.",
    "diet.md": "Sailors ate ship's biscuit, salted beef and, later, lemons against scurvy.",
    "navy.md": "The navy issued lemon juice to every sailor from 1795 onwards.",
    "ports.md": "Ports supplied fresh water, fruit and vegetables to visiting ships.",
    "knots.md": "Sailors tie bowlines and clove hitches; knots hold the rigging.",
    "leave.md": "Staff may carry five days of unused leave into the next year.",
}


class LastFirstReranker:
    """The first stage's last candidate becomes the best; the others keep their order."""

    name = "last-first"

    def warm_up(self) -> None:
        pass

    def rerank(self, query: str, hits: Sequence[ScoredChunk], *, top_k: int) -> list[ScoredChunk]:
        n = len(hits)
        return apply_scores(hits, {i: float(n if i == n - 1 else n - 1 - i) for i in range(n)},
                            top_k=top_k)


@pytest.fixture(scope="module")
def notes(store: PgvectorStore, embedder: LocalEmbedder) -> str:
    pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
    docs = [Document(source=s, title=s.removesuffix(".md"), sections=(Section(t),),
                     content_hash=f"h-{s}") for s, t in NOTES.items()]
    assert pipeline.ingest_documents(docs, collection="rag-rerank-notes").ok
    return "rag-rerank-notes"


def _pipeline(store: PgvectorStore, embedder: LocalEmbedder,
              reranker: Reranker | None = None, top_n: int = 4, fusion: str = "replace") -> RagPipeline:
    return RagPipeline(store=store, embedder=embedder, generator=None, prompts=PromptLibrary.load(),
                       settings=RetrievalSettings(top_k=3), reranker=reranker,
                       rerank_top_n=top_n, rerank_fusion=fusion)


def test_rerank_stage_reorders_the_fused_candidates(
    store: PgvectorStore, embedder: LocalEmbedder, notes: str
) -> None:
    a, b, c, d = _pipeline(store, embedder).retrieve(QUESTION, collection=notes, top_k=4)
    timer = Timer({})
    ranked = _pipeline(store, embedder, LastFirstReranker(), top_n=4).retrieve(
        QUESTION, collection=notes, top_k=2, timer=timer)
    assert [h.chunk.id for h in ranked] == [d.chunk.id, a.chunk.id]
    assert ranked[0].scores["rerank"] == 4.0 and "rrf" in ranked[0].scores
    assert {"embed_ms", "bm25_ms", "fusion_ms", "rerank_ms"} <= set(timer.timings)


def test_rrf_rerank_fusion_blends_the_two_orders(
    store: PgvectorStore, embedder: LocalEmbedder, notes: str
) -> None:
    a, b, c, d = _pipeline(store, embedder).retrieve(QUESTION, collection=notes, top_k=4)
    ranked = _pipeline(store, embedder, LastFirstReranker(), top_n=4, fusion="rrf").retrieve(
        QUESTION, collection=notes, top_k=3)
    # Reranked d, a, b, c fused with a, b, c, d: a (1st + 2nd) beats d (4th + 1st) beats b.
    assert [h.chunk.id for h in ranked] == [a.chunk.id, d.chunk.id, b.chunk.id]
    assert ranked[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert ranked[0].scores["rerank_rrf"] == ranked[0].score and "rerank" in ranked[0].scores


def test_interpolate_rerank_fusion_weighs_the_two_stages(
    store: PgvectorStore, embedder: LocalEmbedder, notes: str
) -> None:
    a, b, c, d = _pipeline(store, embedder).retrieve(QUESTION, collection=notes, top_k=4)

    def ranked(weight: float, top_k: int = 4) -> list[str]:
        rag = _pipeline(store, embedder, LastFirstReranker(), top_n=3, fusion="interpolate")
        rag.rerank_weight = weight
        return [h.chunk.id for h in rag.retrieve(QUESTION, collection=notes, top_k=top_k)]

    # LastFirst reranks the top three as c, a, b; d, beyond top_n, stays behind them.
    assert ranked(0.0) == [a.chunk.id, b.chunk.id, c.chunk.id, d.chunk.id]
    assert ranked(1.0) == [c.chunk.id, a.chunk.id, b.chunk.id, d.chunk.id]
    hit = _pipeline(store, embedder, LastFirstReranker(), top_n=3, fusion="interpolate").retrieve(
        QUESTION, collection=notes, top_k=1)[0]
    assert hit.scores["rerank_interp"] == hit.score and {"rerank", "rrf"} <= set(hit.scores)


def test_remote_reranker_in_the_pipeline(
    store: PgvectorStore, embedder: LocalEmbedder, notes: str
) -> None:
    candidates = _pipeline(store, embedder).retrieve(QUESTION, collection=notes, top_k=5)
    with serve_app(rerank_app()) as url:
        reranker = RemoteRerankReranker(RerankSettings(kind="remote", url=f"{url}/v1"))
        ranked = _pipeline(store, embedder, reranker, top_n=5).retrieve(
            QUESTION, collection=notes, top_k=3)
    expected = sorted(candidates, key=lambda h: -overlap(QUESTION, rerank_text(h)))[:3]
    assert [h.chunk.id for h in ranked] == [h.chunk.id for h in expected]
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)


def test_a_failing_reranker_keeps_the_first_stage_order(
    store: PgvectorStore, embedder: LocalEmbedder, notes: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = _pipeline(store, embedder).retrieve(QUESTION, collection=notes, top_k=3)
    with serve_app(rerank_app()) as url:
        reranker = RemoteRerankReranker(RerankSettings(kind="remote", url=f"{url}/broken"))
        ranked = _pipeline(store, embedder, reranker).retrieve(QUESTION, collection=notes)
    assert [h.chunk.id for h in ranked] == [h.chunk.id for h in first]
    assert "reranking failed" in caplog.text
