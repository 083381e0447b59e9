"""Assembling the backends from settings: one place that knows which class plays which role."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from core.connectors import Connector, build_connectors
from core.embedders import SentenceTransformerEmbedder
from core.generators import CircuitBreaker, OpenAIChatGenerator
from core.llama_server import LlamaCppServer
from core.packing import EstimateCounter, ServerTokenCounter, TokenCounter
from core.prompts import PromptLibrary
from core.protocols import Generator, Reranker
from core.rag import RagPipeline
from core.rerankers import build_reranker
from core.settings import Settings
from core.stores.database import Database
from core.stores.pgvector_store import PgvectorStore

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The live backends of one process."""

    settings: Settings
    db: Database
    store: PgvectorStore
    embedder: SentenceTransformerEmbedder
    prompts: PromptLibrary
    generator: Generator | None = None
    llm_server: LlamaCppServer | None = None
    connectors: list[Connector] = field(default_factory=list)
    reranker: Reranker | None = None
    token_counter: TokenCounter = field(default_factory=EstimateCounter)

    def store_for(self, tenant: str) -> PgvectorStore:
        """The store scoped to one tenant."""
        return self.store if tenant == self.store.tenant else PgvectorStore(self.db, tenant=tenant)

    def rag(self, *, tenant: str = "default") -> RagPipeline:
        return RagPipeline(store=self.store_for(tenant), embedder=self.embedder,
                           generator=self.generator, prompts=self.prompts,
                           settings=self.settings.retrieval, pii=self.settings.pii,
                           reranker=self.reranker, rerank_top_n=self.settings.rerank.top_n,
                           rerank_fusion=self.settings.rerank.fusion,
                           context_tokens=self.settings.llm.context_tokens,
                           max_answer_tokens=self.settings.llm.max_tokens,
                           token_counter=self.token_counter,
                           rerank_weight=self.settings.rerank.weight)

    def readiness(self) -> dict[str, bool]:
        """Whether each backend answers now."""
        return {
            "database": self.db.ping(),
            "embedder": self.embedder.loaded,
            "generator": self.generator is not None and self.generator.health(),
        }

    @property
    def generator_name(self) -> str:
        if self.llm_server is not None:
            return f"{self.llm_server.model_name} (local llama.cpp)"
        if self.settings.llm.base_url:
            return f"{self.settings.llm.model or 'default model'} at {self.settings.llm.base_url}"
        return "none"


def start_generator(settings: Settings, stack: ExitStack) -> tuple[CircuitBreaker,
                                                                    LlamaCppServer | None]:
    """A generator for the configured server, starting the local one if none is configured."""
    breaker = {"failures": settings.llm.breaker_failures, "reset_s": settings.llm.breaker_reset_s}
    if settings.llm.base_url:
        return CircuitBreaker(OpenAIChatGenerator(settings.llm), **breaker), None
    server = LlamaCppServer(settings.llm, data_dir=settings.data_dir)
    stack.enter_context(server)
    log.info("local llama.cpp server on %s (pid %s)", server.base_url, server.pid)
    llm = settings.llm.model_copy(update={"model": settings.llm.model or server.model_name})
    return CircuitBreaker(OpenAIChatGenerator(llm, base_url=server.base_url), **breaker), server


@contextmanager
def open_runtime(settings: Settings, *, generator: bool = True) -> Iterator[Runtime]:
    """Open the database, load prompts and (optionally) start the generator; close all on exit.

    Raises:
        RagError: any backend failed to start; what was started is stopped again.
    """
    with ExitStack() as stack:
        prompts = PromptLibrary.load()
        db = stack.enter_context(Database(settings.store, data_dir=settings.data_dir))
        embedder = SentenceTransformerEmbedder(settings.embedder)
        gen, server = start_generator(settings, stack) if generator else (None, None)
        reranker = build_reranker(settings.rerank, data_dir=settings.data_dir, prompts=prompts,
                                  llm_base_url=gen.base_url if gen else settings.llm.base_url)
        counter: TokenCounter = EstimateCounter()
        if gen is not None and settings.llm.tokenizer == "server":
            counter = ServerTokenCounter(gen.base_url, model=settings.llm.model or None)
        yield Runtime(settings=settings, db=db, store=PgvectorStore(db), embedder=embedder,
                      prompts=prompts, generator=gen, llm_server=server,
                      connectors=build_connectors(settings.crag.connectors), reranker=reranker,
                      token_counter=counter)
