"""The question-answering pipeline: retrieve, prompt, generate, check citations.

Shared by the HTTP service, the ``verity ask`` command and the evaluation
harness, so all three answer exactly the same way.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from verity.answering.citations import attribute, best_support, check_citations
from verity.answering.fusion import fuse, interpolate, reciprocal_rank_fusion
from verity.answering.injection import neutralize
from verity.answering.packing import TEMPLATE_MARGIN, pack_sources
from verity.answering.pii import PiiVault
from verity.backends.tokenizers import EstimateCounter
from verity.core.errors import ConfigError, GenerationError, RerankError
from verity.core.prompts import PromptLibrary
from verity.core.protocols import Embedder, Generation, Generator, Reranker, Store, TokenCounter
from verity.core.settings import PiiSettings, RetrievalSettings
from verity.core.types import Answer, Citation, ScoredChunk, SearchFilter

log = logging.getLogger(__name__)

_LEXICAL_HALF = ThreadPoolExecutor(max_workers=16, thread_name_prefix="verity-bm25")
"""Runs a hybrid query's BM25 half while its own thread embeds the query and searches dense."""

ABSTAIN_TEXT = "The documents don't contain this."
UNAVAILABLE_TEXT = "Generation is unavailable right now; the closest sources are listed."
MIN_ANSWER_SUPPORT = 0.3  # share of an answer's content words a source must contain
_DONT_KNOW = re.compile(r"\b(i\s+don'?t\s+know|not\s+in\s+the\s+(documents|sources))\b", re.I)


@dataclass
class Timer:
    """Collects per-stage wall-clock milliseconds."""

    timings: dict[str, float]

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: Timer, name: str) -> None:
        self._timer, self._name = timer, name

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = (time.perf_counter() - self._start) * 1000
        self._timer.timings[self._name] = round(elapsed, 2)


@dataclass
class Prepared:
    """A question with its sources, ready for generation; collects timings, usage and trace."""

    question: str
    sources: list[Citation] = field(default_factory=list)
    abstain: bool = False
    timer: Timer = field(default_factory=lambda: Timer({}))
    started: float = field(default_factory=time.perf_counter)
    usage: dict[str, int] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    vault: PiiVault | None = None

    def finish(self, answer: Answer) -> Answer:
        """The answer with this preparation's timings, summed token usage and trace."""
        self.timer.timings["total_ms"] = round((time.perf_counter() - self.started) * 1000, 2)
        usage = {k: self.usage.get(k, 0) + answer.usage.get(k, 0)
                 for k in set(self.usage) | set(answer.usage)}
        trace = {**self.trace, **answer.trace}
        if self.vault is not None:
            trace["pii_masked"] = self.vault.masked
        return replace(answer, timings=dict(self.timer.timings), usage=usage, trace=trace)


class RagPipeline:
    """Answers questions from one tenant's collections.

    With a ``reranker``, retrieval gains a second stage: the first ``rerank_top_n``
    candidates of the first stage are re-scored and the best ``top_k`` kept, in the
    reranker's order (``rerank_fusion="replace"``), by reciprocal rank fusion of
    the reranker's and the first stage's orders (``"rrf"``), or by interpolating
    the two stages' scores (``"interpolate"``: ``rerank_weight`` x the reranker's
    score plus the rest x the first stage's, each min-max normalised over the
    candidates). Asked for more than ``rerank_top_n`` hits, the first stage's
    order continues after the reranked ones.

    With ``vectors`` (the embedder's backend and precision, as ``Runtime.rag``
    passes them), every dense search first asks the store whether the
    collection's vectors were made in a compatible precision, and an
    incompatible query embedder is refused with a ``ConfigError`` that names
    the settings to use.

    Example:
        >>> rag = RagPipeline(store=store, embedder=embedder, generator=gen,
        ...                   prompts=PromptLibrary.load(), settings=RetrievalSettings())
        >>> rag.answer("how do I configure the database?", collection="default").text
    """

    def __init__(
        self,
        *,
        store: Store,
        embedder: Embedder,
        generator: Generator | None,
        prompts: PromptLibrary,
        settings: RetrievalSettings,
        pii: PiiSettings | None = None,
        reranker: Reranker | None = None,
        rerank_top_n: int = 30,
        rerank_fusion: str = "replace",
        context_tokens: int = 4096,
        max_answer_tokens: int = 256,
        token_counter: TokenCounter | None = None,
        rerank_weight: float = 0.5,
        prompt_tokens: int | None = None,
        vectors: tuple[str, str] | None = None,
    ) -> None:
        self.vectors = vectors
        self.pii = pii or PiiSettings()
        self.store = store
        self.embedder = embedder
        self.generator = generator
        self.prompts = prompts
        self.settings = settings
        self.reranker = reranker
        self.rerank_top_n = rerank_top_n
        self.rerank_fusion = rerank_fusion
        self.context_tokens = context_tokens
        self.max_answer_tokens = max_answer_tokens
        self.prompt_tokens = prompt_tokens
        self.token_counter: TokenCounter = token_counter or EstimateCounter()
        self.rerank_weight = rerank_weight

    def retrieve(
        self, question: str, *, collection: str, top_k: int | None = None,
        timer: Timer | None = None, settings: RetrievalSettings | None = None,
        where: SearchFilter | None = None,
    ) -> list[ScoredChunk]:
        """The chunks most relevant to the question, best first.

        The first stage is dense, BM25 or both fused; with a reranker, its first
        ``rerank_top_n`` hits are re-scored and the best ``top_k`` kept (if the
        reranker fails, the first-stage order is kept and a warning logged).

        Every hit carries its per-stage scores in ``scores`` (``dense_float``,
        ``bm25``, ``rrf``, ``rerank`` ...); a hybrid hit found by one retriever only
        lacks the other's.
        """
        cfg = settings or self.settings
        timer = timer or Timer({})
        k = top_k or cfg.top_k
        first = max(k, self.rerank_top_n) if self.reranker else k
        hits = self._first_stage(question, collection=collection, top_k=first, cfg=cfg,
                                 timer=timer, where=where)
        if self.reranker is None:
            return hits
        with timer.stage("rerank_ms"):
            return self._rerank(self.reranker, question, hits, top_k=k, rrf_k=cfg.rrf_k)

    def _first_stage(self, question: str, *, collection: str, top_k: int,
                     cfg: RetrievalSettings, timer: Timer,
                     where: SearchFilter | None) -> list[ScoredChunk]:
        pool = max(top_k, cfg.candidates) if cfg.mode == "hybrid" else top_k

        def lexical_half() -> list[ScoredChunk]:
            with timer.stage("bm25_ms"):
                return self.store.search_lexical(collection=collection, query=question,
                                                 top_k=pool, k1=cfg.bm25_k1, b=cfg.bm25_b,
                                                 where=where)

        if cfg.mode == "bm25":
            return lexical_half()
        with timer.stage("embed_ms"):
            query = self.embedder.embed_query(question)
        # Checked before the halves split, so a missing collection or a lost connection fails
        # the request here, the same way every time.
        self._check_vectors(collection)
        # Hybrid: BM25 runs beside dense search, so the first stage takes about the slower of
        # the two, not their sum.
        side: Future[list[ScoredChunk]] | None = (
            _LEXICAL_HALF.submit(contextvars.copy_context().run, lexical_half)
            if cfg.mode == "hybrid" else None)  # the request's context (ids, spans) goes along
        try:
            with timer.stage("dense_ms"):
                dense = self.store.search_dense(collection=collection, query=query, top_k=pool,
                                                mode=cfg.dense_mode, oversample=cfg.oversample,
                                                where=where)
        except BaseException:
            if side is not None:
                side.cancel()
            raise
        if side is None:
            return dense
        lexical = side.result()
        with timer.stage("fusion_ms"):
            return fuse([dense, lexical], method=cfg.fusion, dense_weight=cfg.dense_weight,
                        rrf_k=cfg.rrf_k, top_k=top_k)

    def _check_vectors(self, collection: str) -> None:
        """Refuse a query embedder whose vectors cannot be compared with the collection's.

        Raises:
            NotFoundError: no such collection.
            ConfigError: the collection's vectors were made by another model, or in an
                incompatible precision.
        """
        if self.vectors is None:
            return
        model, _ = self.store.collection_model(collection)
        if model != self.embedder.name:
            raise ConfigError(f"collection {collection!r} holds embeddings of {model}, and queries "
                              f"are embedded with {self.embedder.name}: set "
                              f"VERITY_EMBEDDER__MODEL to {model}, or query another collection")
        backend, precision = self.vectors
        self.store.check_vectors(collection, backend=backend, precision=precision)

    def _rerank(self, reranker: Reranker, question: str, hits: list[ScoredChunk], *,
                top_k: int, rrf_k: int) -> list[ScoredChunk]:
        candidates, tail = hits[:self.rerank_top_n], hits[self.rerank_top_n:]
        try:
            reranked = reranker.rerank(question, candidates, top_k=len(candidates))
        except RerankError as e:
            log.warning("reranking failed, keeping the first-stage order: %s", e, exc_info=e)
            return hits[:top_k]
        if self.rerank_fusion == "rrf":
            reranked = reciprocal_rank_fusion([candidates, reranked], k=rrf_k, stage="rerank_rrf")
        elif self.rerank_fusion == "interpolate":
            reranked = interpolate(candidates, reranked, weight=self.rerank_weight)
        return (reranked + tail)[:top_k]

    def relevant(self, hits: list[ScoredChunk], *, question: str, collection: str,
                 where: SearchFilter | None = None) -> bool:
        """Whether anything relevant was found: the best dense cosine reaches ``min_score``."""
        dense = [h.scores[key] for h in hits for key in h.scores if key.startswith("dense")]
        if not dense:
            query = self.embedder.embed_query(question)
            self._check_vectors(collection)
            top = self.store.search_dense(collection=collection, query=query, top_k=1, where=where)
            dense = [h.score for h in top]
        return bool(dense) and max(dense) >= self.settings.min_score

    def prepare(
        self, question: str, *, collection: str, top_k: int | None = None,
        settings: RetrievalSettings | None = None, where: SearchFilter | None = None,
    ) -> Prepared:
        """Retrieve the sources for a question and decide whether to abstain."""
        prepared = Prepared(question=question, vault=self.vault_for(collection))
        hits = self.retrieve(question, collection=collection, top_k=top_k, timer=prepared.timer,
                             settings=settings, where=where)
        hits = self.store.widen(hits, window=(settings or self.settings).widen)
        prepared.sources = numbered_sources(hits)
        prepared.abstain = not hits or not self.relevant(hits, question=question,
                                                         collection=collection, where=where)
        return prepared

    def vault_for(self, collection: str) -> PiiVault | None:
        """A fresh vault when the collection's text must be masked for the model, else None."""
        return PiiVault() if self.pii.enabled_for(collection) else None

    def answer(
        self, question: str, *, collection: str, top_k: int | None = None,
        settings: RetrievalSettings | None = None, where: SearchFilter | None = None,
    ) -> Answer:
        """Retrieve, generate and check citations; abstain when nothing relevant is found."""
        return self.complete(self.prepare(question, collection=collection, top_k=top_k,
                                          settings=settings, where=where))

    def complete(self, prepared: Prepared) -> Answer:
        """Generate the answer for prepared sources (or abstain), grounded in them."""
        if prepared.abstain:
            return prepared.finish(Answer(ABSTAIN_TEXT, "abstained", (), tuple(prepared.sources)))
        sources = self.pack(prepared)
        try:
            with prepared.timer.stage("generate_ms"):
                generation = self._generate(prepared.question, sources, prepared.vault)
        except GenerationError:
            return prepared.finish(
                Answer(UNAVAILABLE_TEXT, "generation_unavailable", (), tuple(sources)))
        return prepared.finish(ground(generation, sources))

    def stream(self, prepared: Prepared) -> Iterator[str | Answer]:
        """The answer's text deltas as the model writes them, then the grounded :class:`Answer`.

        Raises:
            GenerationError: the model server failed, before or during the stream.
        """
        if prepared.abstain or self.generator is None:
            answer = self.complete(prepared)
            yield answer.text
            yield answer
            return
        parts: list[str] = []
        vault = prepared.vault
        self.pack(prepared)
        with prepared.timer.stage("generate_ms"):
            deltas = self.generator.stream(self.messages(prepared.question, prepared.sources,
                                                         vault))
            for delta in vault.unmask_stream(deltas) if vault else deltas:
                parts.append(delta)
                yield delta
        # A stream reports no usage: the prompt as packing counted it, one token a delta.
        context = prepared.trace.get("context", {})
        prompt = context.get("prompt_tokens_without_sources", 0) + context.get("source_tokens", 0)
        yield prepared.finish(ground(Generation(text="".join(parts).strip(), prompt_tokens=prompt,
                                                completion_tokens=len(parts)), prepared.sources))

    def pack(self, prepared: Prepared) -> list[Citation]:
        """Fit ``prepared.sources`` into the model's context window (in place) and return them.

        The budget is the context window minus the answer's ``max_tokens`` (or
        ``prompt_tokens`` if that is less), the prompt without sources and a
        margin for the chat template; sources are taken in rank order and the
        first that does not fit is cut at a sentence boundary. The trace gets the
        budget and the tokens spent.
        """
        with prepared.timer.stage("pack_ms"):
            count, vault = self.token_counter.count, prepared.vault
            system, user = (count(m["content"]) for m in self.messages(prepared.question, [], vault))
            prompt = system + user + TEMPLATE_MARGIN
            window = self.context_tokens - self.max_answer_tokens
            budget = min(window, self.prompt_tokens or window) - prompt
            packed = pack_sources(
                prepared.sources, budget=budget, count=count,
                cost=lambda s: count(self.messages(prepared.question, [s], vault)[1]["content"]) - user)
        prepared.sources = packed.sources
        prepared.trace["context"] = {"context_tokens": self.context_tokens,
                                     "prompt_tokens": self.prompt_tokens,
                                     "prompt_tokens_without_sources": prompt,
                                     "max_answer_tokens": self.max_answer_tokens,
                                     **packed.trace(self.token_counter.name)}
        return packed.sources

    def messages(self, question: str, sources: list[Citation],
                 vault: PiiVault | None = None) -> list[dict[str, str]]:
        """The chat messages: rules, then the fenced sources with instructions removed
        (and personal data masked when a vault is given)."""
        mask = vault.mask if vault else (lambda text: text)
        return [
            {"role": "system", "content": self.prompts.render("answer_system")},
            {"role": "user", "content": self.prompts.render(
                "answer_user", question=mask(question),
                sources=[{"n": s.n, "document": s.document,
                          "title": mask(neutralize(s.title)[0]).replace('"', "'"),
                          "text": mask(neutralize(s.text)[0])} for s in sources],
            )},
        ]

    def _generate(self, question: str, sources: list[Citation],
                  vault: PiiVault | None = None) -> Generation:
        if self.generator is None:
            raise GenerationError("no generator is configured")
        generation = self.generator.generate(self.messages(question, sources, vault))
        return replace(generation, text=vault.unmask(generation.text)) if vault else generation


def numbered_sources(hits: Any) -> list[Citation]:
    return [
        Citation(n=i, document=h.source, chunk_id=h.chunk.id, text=h.chunk.text,
                 page=h.chunk.page, heading=h.chunk.heading, title=h.title, score=h.score,
                 relevance=max((v for k, v in h.scores.items() if k.startswith("dense")),
                               default=None))
        for i, h in enumerate(hits, start=1)
    ]


def ground(generation: Generation, sources: list[Citation]) -> Answer:
    """Turn raw model text into an answer whose citations all point at given sources."""
    usage = {"prompt_tokens": generation.prompt_tokens,
             "completion_tokens": generation.completion_tokens}
    if _DONT_KNOW.search(generation.text) and len(generation.text) < 200:
        return Answer(ABSTAIN_TEXT, "abstained", (), tuple(sources), usage=usage)
    checked = check_citations(generation.text, n_sources=len(sources))
    attributed = attribute(checked.text, [s.text for s in sources])
    if attributed != checked.text:
        checked = replace(check_citations(attributed, n_sources=len(sources)),
                          invalid=checked.invalid)
    if not checked.cited:
        # No sentence is clearly supported on its own: cite the best source for the whole
        # answer if it supports a fair share of it, else do not pass it off as grounded.
        best, share = best_support(checked.text, [s.text for s in sources])
        if share < MIN_ANSWER_SUPPORT:
            return Answer(ABSTAIN_TEXT, "abstained", (), tuple(sources), usage=usage,
                          trace={"unsupported_answer": checked.text})
        checked = check_citations(f"{checked.text} [{best + 1}]", n_sources=len(sources))
    by_n = {s.n: s for s in sources}
    citations = tuple(by_n[n] for n in checked.cited)
    return Answer(checked.text, "answered", citations, tuple(sources),
                  invalid_citations=checked.invalid, usage=usage)



