"""Assembling the backends from settings: one place that knows which class plays which role."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from verity.answering.pipeline import RagPipeline
from verity.backends.connectors import Connector, build_connectors
from verity.backends.embedders import LocalEmbedder, build_embedder
from verity.backends.generators import CircuitBreaker, OpenAIChatGenerator
from verity.backends.llama_server import LlamaCppServer
from verity.backends.rerankers import build_reranker
from verity.backends.stores.database import Database
from verity.backends.stores.dense_index import DenseIndexes
from verity.backends.stores.factory import build_store
from verity.backends.stores.tantivy_index import LexicalIndexes
from verity.backends.tokenizers import EstimateCounter, build_token_counter
from verity.core.prompts import PromptLibrary
from verity.core.protocols import Generator, Reranker, Store, TokenCounter
from verity.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The live backends of one process."""

    settings: Settings
    db: Database
    store: Store
    embedder: LocalEmbedder
    prompts: PromptLibrary
    generator: Generator | None = None
    llm_server: LlamaCppServer | None = None
    connectors: list[Connector] = field(default_factory=list)
    reranker: Reranker | None = None
    token_counter: TokenCounter = field(default_factory=EstimateCounter)
    lexical: LexicalIndexes | None = None
    dense: DenseIndexes | None = None

    def store_for(self, tenant: str) -> Store:
        """The store scoped to one tenant."""
        return (self.store if tenant == self.store.tenant
                else build_store(self.db, tenant=tenant, lexical=self.lexical, dense=self.dense))

    def rag(self, *, tenant: str = "default") -> RagPipeline:
        return RagPipeline(store=self.store_for(tenant), embedder=self.embedder,
                           generator=self.generator, prompts=self.prompts,
                           settings=self.settings.retrieval, pii=self.settings.pii,
                           reranker=self.reranker, rerank_top_n=self.settings.rerank.top_n,
                           rerank_fusion=self.settings.rerank.fusion,
                           context_tokens=self.settings.llm.context_tokens,
                           max_answer_tokens=self.settings.llm.max_tokens,
                           prompt_tokens=self.settings.llm.prompt_limit(),
                           token_counter=self.token_counter,
                           rerank_weight=self.settings.rerank.weight,
                           vectors=(self.embedder.settings.backend,
                                    self.embedder.query_precision))

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
    failures, reset_s = settings.llm.breaker_failures, settings.llm.breaker_reset_s
    if settings.llm.base_url:
        return CircuitBreaker(OpenAIChatGenerator(settings.llm), failures=failures, reset_s=reset_s), None
    # The LLM-judge reranker asks the generator's server for log-probabilities unless it has
    # a server of its own.
    judge = settings.rerank.kind == "llm-judge" and not settings.rerank.url
    server = LlamaCppServer(settings.llm, data_dir=settings.data_dir, logprobs=judge)
    stack.enter_context(server)
    log.info("local llama.cpp server on %s (pid %s)", server.base_url, server.pid)
    llm = settings.llm.model_copy(update={"model": settings.llm.model or server.model_name})
    return (CircuitBreaker(OpenAIChatGenerator(llm, base_url=server.base_url), failures=failures,
                           reset_s=reset_s), server)


@contextmanager
def open_runtime(settings: Settings, *, generator: bool = True,
                 reranker: bool = True) -> Iterator[Runtime]:
    """Open the database, load prompts and (optionally) start the generator; close all on exit.

    The one way to open the backends, for the service and every command. The store and
    the embedder are always there (the model loads on first use, so a command that only
    reads the store pays nothing for it).

    Args:
        settings: what to open.
        generator: start (or connect to) the generator; without it ``Runtime.generator``
            is None and answers cannot be generated.
        reranker: build the configured reranker; without it ``Runtime.reranker`` is None.

    Raises:
        RagError: any backend failed to start; what was started is stopped again.
    """
    with ExitStack() as stack:
        prompts = PromptLibrary.load()
        db = stack.enter_context(Database(settings.store, data_dir=settings.data_dir))
        embedder = build_embedder(settings.embedder, data_dir=settings.data_dir)
        gen, server = start_generator(settings, stack) if generator else (None, None)
        second_stage = build_reranker(
            settings.rerank, data_dir=settings.data_dir, prompts=prompts,
            llm_base_url=gen.base_url if gen else settings.llm.base_url) if reranker else None
        close_reranker = getattr(second_stage, "close", None)
        if close_reranker is not None:
            stack.callback(close_reranker)
        counter = build_token_counter(settings.llm, base_url=gen.base_url if gen else None,
                                      local=server is not None, data_dir=settings.data_dir)
        lexical = (stack.enter_context(LexicalIndexes(db, root=settings.data_dir / "lexical"))
                   if settings.retrieval.lexical == "tantivy" else None)
        dense = (stack.enter_context(DenseIndexes(db))
                 if settings.retrieval.dense_index == "memory" else None)
        yield Runtime(settings=settings, db=db, store=build_store(db, lexical=lexical, dense=dense),
                      embedder=embedder, lexical=lexical, dense=dense,
                      prompts=prompts, generator=gen, llm_server=server,
                      connectors=build_connectors(settings.crag.connectors), reranker=second_stage,
                      token_counter=counter)
