"""Packing sources into the model's window, counted by the real llama.cpp server's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.pipeline import IngestPipeline
from tests.conftest import make_settings
from verity.answering.pipeline import Prepared, RagPipeline
from verity.backends.embedders import LocalEmbedder
from verity.backends.llama_server import LlamaCppServer, free_port
from verity.backends.models import resolve_gguf
from verity.backends.stores.pgvector_store import PgvectorStore
from verity.backends.tokenizers import (
    RETRY_AFTER_S,
    EstimateCounter,
    GgufTokenCounter,
    ServerTokenCounter,
    build_token_counter,
)
from verity.core.prompts import PromptLibrary
from verity.core.settings import BUNDLED_GGUF, ChunkingSettings, RetrievalSettings
from verity.core.types import Document, Section

pytestmark = pytest.mark.integration

QUESTION = "What did sailors eat to prevent scurvy?"
NOTES = {
    "diet.md": "Sailors ate ship's biscuit and salted beef. Later they ate lemons against scurvy. "
               "Lemons keep for months at sea. Limes were cheaper but worked less well. "
               "Sauerkraut was tried on Cook's voyages. The crews disliked it at first. "
               "Officers ate it in public so that the men would follow.",
    "navy.md": "The navy issued lemon juice to every sailor from 1795 onwards. The ration was "
               "mixed into the daily grog. Scurvy nearly vanished from the fleet. "
               "Surgeons kept records of every case. The juice came from Sicily and Malta. "
               "Boiling it for storage destroyed much of its value.",
    "scurvy.md": "Scurvy is a disease caused by a lack of vitamin C. It makes gums bleed. "
                 "Old wounds open again. Without fresh food sailors died of it on long voyages. "
                 "The first signs are tiredness and sore limbs. Teeth loosen later on. "
                 "Fresh fruit and vegetables cure it within days.",
    "ports.md": "Ports supplied fresh water, fruit and vegetables to visiting ships. "
                "Sailors bought oranges in Spanish ports. Fresh fruit cured scurvy within days. "
                "Onions and potatoes kept well in the hold. Live animals gave fresh meat. "
                "Captains planned their routes around good harbours.",
}


@pytest.fixture(scope="module")
def sailing(store: PgvectorStore, embedder: LocalEmbedder) -> str:
    pipeline = IngestPipeline(store=store, embedder=embedder, chunking=ChunkingSettings())
    docs = [Document(source=s, title=s.removesuffix(".md"), sections=(Section(t),),
                     content_hash=f"pack2-{s}") for s, t in NOTES.items()]
    assert pipeline.ingest_documents(docs, collection="packing-notes").ok
    return "packing-notes"


def test_the_server_counts_with_the_models_tokenizer(llm_server: LlamaCppServer) -> None:
    counter = ServerTokenCounter(llm_server.base_url)
    n = counter.count("The navy issued lemon juice to every sailor.")
    assert counter.name == "llama_cpp.server"
    assert 8 <= n <= 14  # Qwen's BPE: about one token per word here
    assert counter.count("lemon " * 50) > counter.count("lemon " * 10)


def test_sources_fill_the_window_in_rank_order_and_the_last_is_cut(
        store: PgvectorStore, embedder: LocalEmbedder, llm_server: LlamaCppServer,
        sailing: str) -> None:
    counter = ServerTokenCounter(llm_server.base_url)

    def pipeline(window: int) -> RagPipeline:
        return RagPipeline(store=store, embedder=embedder, generator=None,
                           prompts=PromptLibrary.load(), settings=RetrievalSettings(top_k=4),
                           context_tokens=window, max_answer_tokens=64, token_counter=counter)

    roomy = pipeline(4096)
    full = roomy.prepare(QUESTION, collection=sailing)
    ranked = [s.chunk_id for s in full.sources]
    roomy.pack(full)
    context = full.trace["context"]
    assert context["sources_given"] == 4 and context["sources_dropped"] == 0
    assert context["token_counter"] == "llama_cpp.server"
    # A window with room for the first source and about half of the second.
    per_source = context["source_tokens"] // 4
    window = 4096 - context["budget_tokens"] + per_source + (per_source * 2) // 3
    tight = pipeline(window)
    prepared = Prepared(question=QUESTION, sources=list(full.sources))
    sources = tight.pack(prepared)
    trace = prepared.trace["context"]
    assert [s.chunk_id for s in sources] == ranked[:2]  # rank order kept, nothing skipped
    assert trace["truncated_source"] == 2 and trace["sources_dropped"] == 2
    assert sources[1].text.endswith(".") and sources[1].text != full.sources[1].text
    assert full.sources[1].text.startswith(sources[1].text)  # cut at a sentence boundary
    messages = tight.messages(QUESTION, sources)
    used = sum(counter.count(m["content"]) for m in messages)
    assert used + 64 <= window  # the prompt and the answer fit the window


def test_a_prompt_limit_keeps_the_whole_prompt_under_it_in_a_large_window(
        store: PgvectorStore, embedder: LocalEmbedder, sailing: str,
        data_dir: Path) -> None:
    """``prompt_tokens`` bounds the prompt (and so the prefill) whatever the window allows."""
    counter = GgufTokenCounter(resolve_gguf(BUNDLED_GGUF, data_dir=data_dir))

    def pipeline(limit: int | None) -> RagPipeline:
        return RagPipeline(store=store, embedder=embedder, generator=None,
                           prompts=PromptLibrary.load(), settings=RetrievalSettings(top_k=4),
                           context_tokens=4096, max_answer_tokens=64, token_counter=counter,
                           prompt_tokens=limit)

    full = pipeline(None).prepare(QUESTION, collection=sailing)
    ranked = [s.chunk_id for s in full.sources]
    unlimited = Prepared(question=QUESTION, sources=list(full.sources))
    pipeline(None).pack(unlimited)
    whole = sum(counter.count(m["content"]) for m in pipeline(None).messages(
        QUESTION, unlimited.sources))
    assert unlimited.trace["context"]["sources_given"] == 4
    limit = whole // 2
    limited = pipeline(limit)
    prepared = Prepared(question=QUESTION, sources=list(full.sources))
    sources = limited.pack(prepared)
    trace = prepared.trace["context"]
    assert trace["prompt_tokens"] == limit and 1 <= len(sources) < 4
    assert [s.chunk_id for s in sources] == ranked[:len(sources)]  # rank order, nothing skipped
    used = sum(counter.count(m["content"]) for m in limited.messages(QUESTION, sources))
    assert used <= limit  # rules, question and sources together


def test_the_gguf_counts_in_process_as_the_server_does(llm_server: LlamaCppServer,
                                                       data_dir: Path) -> None:
    server = ServerTokenCounter(llm_server.base_url)
    local = GgufTokenCounter(resolve_gguf(BUNDLED_GGUF, data_dir=data_dir))
    for text in [*NOTES.values(), "The navy issued lemon juice to every sailor.",
                 "<|im_start|>system ünïcödé 1795 [1] — ok", ""]:
        assert local.count(text) == server.count(text), text
    assert local.name == "gguf"


def test_the_runtime_counts_with_the_local_models_vocabulary(data_dir: Path, llm_server: LlamaCppServer,
                                                             ) -> None:
    settings = make_settings(data_dir)
    counter = build_token_counter(settings.llm, base_url=llm_server.base_url, local=True,
                                  data_dir=data_dir)
    assert isinstance(counter, GgufTokenCounter)
    remote = build_token_counter(settings.llm, base_url=llm_server.base_url, local=False,
                                 data_dir=data_dir)
    assert isinstance(remote, ServerTokenCounter)
    estimate = settings.llm.model_copy(update={"tokenizer": "estimate"})
    assert isinstance(build_token_counter(estimate, base_url=llm_server.base_url, local=True,
                                          data_dir=data_dir), EstimateCounter)
    assert isinstance(build_token_counter(settings.llm, base_url=None, local=False,
                                          data_dir=data_dir), EstimateCounter)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_tokenizer_is_estimated_for_a_while_then_asked_again(
        llm_server: LlamaCppServer) -> None:
    """One failure used to disable exact counts for the life of the process."""
    clock = Clock()
    down = ServerTokenCounter(f"http://127.0.0.1:{free_port()}/v1", clock=clock)
    text = "The navy issued lemon juice to every sailor."
    assert down.count(text) == EstimateCounter().count(text) and down.name == "estimate"
    down.root = ServerTokenCounter(llm_server.base_url).root  # the server is back
    assert down.count(text) == EstimateCounter().count(text)  # not asked again yet
    clock.now += RETRY_AFTER_S
    exact = down.count(text)
    assert down.name == "llama_cpp.server" and exact < EstimateCounter().count(text)


def test_a_missing_gguf_is_estimated_not_raised(tmp_path: Path) -> None:
    counter = GgufTokenCounter(tmp_path / "missing.gguf")
    assert counter.count("two words") == EstimateCounter().count("two words")
    assert counter.name == "estimate"
