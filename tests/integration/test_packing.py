"""Packing sources into the model's window, counted by the real llama.cpp server's tokenizer."""

from __future__ import annotations

import pytest

from core.embedders import SentenceTransformerEmbedder
from core.llama_server import LlamaCppServer
from core.packing import ServerTokenCounter
from core.prompts import PromptLibrary
from core.rag import Prepared, RagPipeline
from core.settings import ChunkingSettings, RetrievalSettings
from core.stores.pgvector_store import PgvectorStore
from core.types import Document, Section
from ingest.pipeline import IngestPipeline

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
def sailing(store: PgvectorStore, embedder: SentenceTransformerEmbedder) -> str:
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
        store: PgvectorStore, embedder: SentenceTransformerEmbedder, llm_server: LlamaCppServer,
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
