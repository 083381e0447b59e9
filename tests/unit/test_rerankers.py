"""Reranker backends without models: score handling, the factory, and the remote and
llm-judge backends against deterministic fake servers on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.fakes import judge_app, rerank_app
from tests.helpers import serve_app
from verity.backends.rerankers import (
    CrossEncoderReranker,
    LlmJudgeReranker,
    RemoteRerankReranker,
    apply_scores,
    build_reranker,
    parse_rerank_response,
    rerank_endpoint,
    rerank_text,
    yes_probability,
)
from verity.core.errors import ConfigError, RerankError
from verity.core.prompts import PromptLibrary
from verity.core.settings import RerankSettings
from verity.core.types import Chunk, ScoredChunk

pytestmark = pytest.mark.unit

TEXTS = [
    "Sailors on long voyages ate hard tack and salted meat.",
    "Scurvy is caused by a lack of vitamin C; citrus fruit prevents scurvy.",
    "The harbour was busy with ships in the eighteenth century.",
]
QUESTION = "What prevents scurvy? Vitamin C"


def _hits(texts: list[str] = TEXTS) -> list[ScoredChunk]:
    return [ScoredChunk(chunk=Chunk(id=f"c{i}", document_id=f"d{i}", ordinal=0, text=t),
                        score=1.0 - i / 10, source=f"doc{i}.md", title=f"Doc {i}",
                        scores={"rrf": 1.0 - i / 10})
            for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def rerank_url() -> Iterator[str]:
    with serve_app(rerank_app()) as url:
        yield url


def _remote(url: str, **overrides: Any) -> RemoteRerankReranker:
    return RemoteRerankReranker(RerankSettings(kind="remote", url=url, **overrides))


def test_apply_scores_orders_keeps_stage_scores_and_truncates() -> None:
    ranked = apply_scores(_hits(), {0: 0.1, 1: 0.9, 2: 0.1}, top_k=2)
    assert [h.chunk.id for h in ranked] == ["c1", "c0"]  # the tie keeps the earlier hit first
    assert ranked[0].score == 0.9 and ranked[0].scores == {"rrf": 0.9, "rerank": 0.9}


def test_rerank_text_prefixes_the_title_once() -> None:
    hit = _hits()[0]
    assert rerank_text(hit) == f"Doc 0\n{TEXTS[0]}"
    titled = ScoredChunk(chunk=Chunk(id="x", document_id="d", ordinal=0, text="Doc 0 says hi"),
                         score=0, source="s", title="Doc 0")
    assert rerank_text(titled) == "Doc 0 says hi"


def test_response_shapes_of_cohere_vllm_and_tei() -> None:
    cohere = {"results": [{"index": 2, "relevance_score": 0.8}, {"index": 0, "relevance_score": 0.1}]}
    assert parse_rerank_response(cohere, n=3) == {2: 0.8, 0: 0.1}
    tei = [{"index": 1, "score": 3.5}, {"index": 0, "score": -1.0}]
    assert parse_rerank_response(tei, n=2) == {1: 3.5, 0: -1.0}
    with pytest.raises(RerankError, match="index 5"):
        parse_rerank_response([{"index": 5, "score": 1.0}], n=2)
    with pytest.raises(RerankError, match="results"):
        parse_rerank_response({"data": []}, n=2)


def test_endpoint_accepts_a_base_url_or_the_full_path() -> None:
    assert rerank_endpoint("http://vllm:8000/v1/") == "http://vllm:8000/v1/rerank"
    assert rerank_endpoint("http://tei:80/rerank") == "http://tei:80/rerank"


def test_remote_reranker_reorders_through_a_cohere_style_server(rerank_url: str) -> None:
    reranker = _remote(f"{rerank_url}/v1", model="fake-reranker")
    ranked = reranker.rerank(QUESTION, _hits(), top_k=2)
    assert [h.chunk.id for h in ranked] == ["c1", "c0"]
    assert ranked[0].scores["rerank"] == ranked[0].score and ranked[0].scores["rrf"] == 0.9
    assert reranker.rerank(QUESTION, [], top_k=3) == []


def test_remote_request_body() -> None:
    app = rerank_app()
    with serve_app(app) as url:
        _remote(f"{url}/v1", model="m").rerank(QUESTION, _hits(), top_k=2)
    [body] = app.state.requests
    assert body["model"] == "m" and body["query"] == QUESTION and body["top_n"] == 2
    assert body["documents"] == [rerank_text(h) for h in _hits()] == body["texts"]


def test_remote_reranker_reads_tei_answers(rerank_url: str) -> None:
    ranked = _remote(f"{rerank_url}/tei/rerank").rerank(QUESTION, _hits(), top_k=3)
    assert [h.chunk.id for h in ranked][0] == "c1" and len(ranked) == 3


@pytest.mark.parametrize(("path", "match"), [
    ("/broken", "HTTP 500"), ("/odd", "results"), ("/missing", "HTTP 404"),
])
def test_remote_failures_are_clear_errors(rerank_url: str, path: str, match: str) -> None:
    with pytest.raises(RerankError, match=match):
        _remote(f"{rerank_url}{path}").rerank(QUESTION, _hits(), top_k=2)


def test_remote_timeout(rerank_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(RerankError, match="timed out after 0.3s"):
        _remote(f"{rerank_url}/slow", timeout_s=0.3).rerank(QUESTION, _hits(), top_k=2)
    assert time.monotonic() - started < 1.5


def test_unreachable_remote_server() -> None:
    from verity.backends.llama_server import free_port

    with pytest.raises(RerankError, match="unreachable"):
        _remote(f"http://127.0.0.1:{free_port()}").rerank(QUESTION, _hits(), top_k=2)


def test_yes_probability() -> None:
    assert yes_probability({"Yes": -0.1, "No": -2.3}) == pytest.approx(0.9, abs=0.01)
    assert yes_probability({" yes": -1.0, "yes": -1.0, "no": -1.0}) == pytest.approx(2 / 3)
    assert yes_probability({"Maybe": -0.1}) == 0.0


def test_llm_judge_falls_back_to_completions_without_chat_logprobs() -> None:
    with serve_app(judge_app()) as url:
        judge = LlmJudgeReranker(RerankSettings(kind="llm-judge"), base_url=f"{url}/v1",
                                 prompts=PromptLibrary.load())
        ranked = judge.rerank(QUESTION, _hits(), top_k=3)
    assert judge.use_completions
    assert ranked[0].chunk.id == "c1" and ranked[0].score == pytest.approx(0.9, abs=0.01)
    assert all(0.0 <= h.score <= 1.0 for h in ranked)


def test_factory_builds_each_kind(tmp_path: Path) -> None:
    assert build_reranker(RerankSettings(), data_dir=tmp_path) is None
    cross = build_reranker(RerankSettings(kind="cross-encoder"), data_dir=tmp_path)
    assert isinstance(cross, CrossEncoderReranker) and not cross.loaded
    remote = build_reranker(RerankSettings(kind="remote", url="http://x/v1"), data_dir=tmp_path)
    assert isinstance(remote, RemoteRerankReranker) and remote.url == "http://x/v1/rerank"
    judge = build_reranker(RerankSettings(kind="llm-judge"), data_dir=tmp_path,
                           llm_base_url="http://127.0.0.1:9/v1")
    assert isinstance(judge, LlmJudgeReranker)
    with pytest.raises(ConfigError, match="VERITY_RERANK__URL"):
        build_reranker(RerankSettings(kind="llm-judge"), data_dir=tmp_path)
    with pytest.raises(ValueError, match="cross-encoder"):
        build_reranker(RerankSettings.model_construct(kind="colbert"),  # type: ignore[arg-type]  # unknown on purpose
                       data_dir=tmp_path)


def test_settings_validate_the_kind_and_the_remote_url() -> None:
    with pytest.raises(ValidationError):
        RerankSettings(kind="colbert")  # type: ignore[arg-type]  # an unknown kind on purpose
    with pytest.raises(ValidationError, match="rerank.url"):
        RerankSettings(kind="remote")


def test_missing_tuned_model_says_how_to_make_one(tmp_path: Path) -> None:
    reranker = CrossEncoderReranker(RerankSettings(kind="cross-encoder"), data_dir=tmp_path)
    with pytest.raises(ConfigError, match="verity tune reranker"):
        reranker.warm_up()
    with pytest.raises(ConfigError):  # not a RerankError: the pipeline must not hide it
        reranker.rerank("q", [ScoredChunk(chunk=Chunk(id="c", document_id="d", ordinal=0,
                                                      text="t"), score=0, source="s")], top_k=1)
