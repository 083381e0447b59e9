"""Corrective RAG (Yan et al., 2024, arXiv:2401.15884) over Verity's retrieval.

1. Retrieve, then grade the retrieval with the evaluator: the best chunk's
   relevance score against calibrated thresholds gives *correct*, *ambiguous*
   or *incorrect*.
2. *Correct*: knowledge refinement. Kept chunks are cut into strips
   (sentences), each strip is scored against the question, the relevant ones
   are kept and recomposed in document order.
3. *Incorrect*: corrective action. The model rewrites the question into a
   search query, retrieval runs again more broadly (more candidates,
   lexical-heavy fusion, sibling collections the caller may read) and any
   configured external connectors are asked; the results are refined the same
   way. If nothing relevant remains, Verity abstains and lists the closest sources.
4. *Ambiguous*: both the refined internal knowledge and the corrective results.

Every answer carries a trace of what happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from verity.answering.pii import PiiVault
from verity.answering.pipeline import Prepared, RagPipeline
from verity.backends.connectors import Connector
from verity.core.errors import GenerationError, NotFoundError
from verity.core.lexical import analyze
from verity.core.sentences import split_sentences
from verity.core.settings import CragSettings, RetrievalSettings
from verity.core.types import Answer, Citation, ScoredChunk, SearchFilter

CragAction = Literal["correct", "ambiguous", "incorrect"]


@dataclass(frozen=True, slots=True)
class Knowledge:
    """A piece of evidence: a retrieved chunk or an external passage, possibly refined."""

    document: str
    chunk_id: str
    text: str
    score: float
    order: tuple[str, int] = ("", 0)
    page: int | None = None
    heading: str = ""
    title: str = ""


def grade(best: float, *, upper: float, lower: float) -> CragAction:
    """The evaluator's verdict for a retrieval whose best relevance score is ``best``."""
    if best >= upper:
        return "correct"
    if best < lower:
        return "incorrect"
    return "ambiguous"


def split_strips(text: str, *, max_words: int = 60) -> list[str]:
    """Sentences of ``text``; runs longer than ``max_words`` are cut into windows."""
    strips = []
    for sentence in split_sentences(text):
        words = sentence.split()
        for start in range(0, len(words), max_words):
            piece = " ".join(words[start:start + max_words])
            if len(piece) > 3:
                strips.append(piece)
    return strips


class CorrectiveRag:
    """Answers with CRAG's grade → refine / correct / abstain loop.

    Example:
        >>> crag = CorrectiveRag(rag, CragSettings(enabled=True), connectors=[])
        >>> crag.answer("Who founded Acme?", collection="default").trace["action"]
        'correct'
    """

    def __init__(self, rag: RagPipeline, settings: CragSettings,
                 connectors: Sequence[Connector] = ()) -> None:
        self.rag = rag
        self.settings = settings
        self.connectors = list(connectors)

    def answer(
        self, question: str, *, collection: str, top_k: int | None = None,
        where: SearchFilter | None = None, retrieval: RetrievalSettings | None = None,
    ) -> Answer:
        """Grade, correct and refine the evidence, then generate a grounded answer."""
        return self.rag.complete(self.prepare(question, collection=collection, top_k=top_k,
                                              where=where, retrieval=retrieval))

    def prepare(
        self, question: str, *, collection: str, top_k: int | None = None,
        where: SearchFilter | None = None, retrieval: RetrievalSettings | None = None,
    ) -> Prepared:
        """Retrieve, grade and correct; the refined knowledge becomes the numbered sources."""
        prepared = Prepared(question=question, usage={"prompt_tokens": 0, "completion_tokens": 0},
                            vault=self.rag.vault_for(collection))
        timer, trace = prepared.timer, prepared.trace
        cfg = retrieval or self.rag.settings
        hits = self.rag.retrieve(question, collection=collection, top_k=top_k, timer=timer,
                                 settings=cfg, where=where)
        with timer.stage("evaluate_ms"):
            qvec, scored, best = self.evaluate(question, hits)
        action = grade(best, upper=self.settings.upper, lower=self.settings.lower)
        trace.update(crag=True, action=action, best_score=round(best, 4),
                     thresholds={"upper": self.settings.upper, "lower": self.settings.lower},
                     scores={h.chunk.id: round(s, 4) for h, s in scored})
        internal: list[Knowledge] = []
        corrective: list[Knowledge] = []
        if action in ("correct", "ambiguous"):
            # Every retrieved chunk goes to refinement, as in the paper: the strips are what
            # get filtered. Dropping whole chunks by their own score lost the one page that
            # named the person asked about whenever its long text diluted the cosine.
            internal = [_from_hit(h, s) for h, s in scored]
        if action in ("incorrect", "ambiguous"):
            with timer.stage("correct_ms"):
                corrective = self._correct(question, qvec, collection=collection, where=where,
                                           cfg=cfg, top_k=top_k, trace=trace,
                                           usage=prepared.usage, vault=prepared.vault)
        seen = {k.chunk_id for k in internal}
        with timer.stage("refine_ms"):
            # Internal knowledge passed the evaluator; corrective results come after it and
            # are refined on their own, so they add to it rather than crowd it out.
            refined = self._refine(question, qvec, internal, trace) + self._refine(
                question, qvec, [k for k in corrective if k.chunk_id not in seen], trace)
        unsupported = self._unanswerable(trace)
        if refined and not unsupported:
            prepared.sources = _citations(refined)
        else:
            trace["abstained"] = unsupported or "no relevant knowledge after correction"
            prepared.sources = _citations([_from_hit(h, s) for h, s in scored])
            prepared.abstain = True
        return prepared

    def _unanswerable(self, trace: dict[str, Any]) -> str:
        """Why the answerability check fails (the best strip is too weak), or "" if it passes."""
        floor, best = self.settings.answerable_min, trace.get("best_strip")
        if floor is None or best is None or best >= floor:
            return ""
        return f"no retrieved sentence supports the question (best strip {best} < {floor})"

    def evaluate(self, question: str, hits: Sequence[ScoredChunk]
                 ) -> tuple[np.ndarray, list[tuple[ScoredChunk, float]], float]:
        """The retrieval evaluator: the question's vector, each hit's relevance, the best one."""
        qvec = self.rag.embedder.embed_query(question)
        scored = self._relevance(question, qvec, hits)
        return qvec, scored, max((s for _, s in scored), default=0.0)

    def _relevance(self, question: str, qvec: np.ndarray, hits: Sequence[ScoredChunk]
                   ) -> list[tuple[ScoredChunk, float]]:
        """Each hit's relevance: the reranker's score if present, else dense cosine similarity
        (times the hit's share of the question's terms, :func:`term_coverage`, if enabled)."""
        reranked = {h.chunk.id: h.scores["rerank"] for h in hits if "rerank" in h.scores}
        cosine = {h.chunk.id: dense for h in hits if (dense := _dense_score(h)) is not None}
        missing = [h for h in hits if h.chunk.id not in reranked and h.chunk.id not in cosine]
        if missing:
            vectors = self.rag.embedder.embed_documents([h.chunk.text for h in missing])
            cosine.update({h.chunk.id: float(v @ qvec) for h, v in zip(missing, vectors, strict=True)})
        if self.settings.term_coverage and cosine:
            cover = term_coverage(question, [f"{h.title}. {h.chunk.text}" for h in hits])
            cosine = {h.chunk.id: cosine[h.chunk.id] * float(c)
                      for h, c in zip(hits, cover, strict=True) if h.chunk.id in cosine}
        return [(h, reranked.get(h.chunk.id, cosine.get(h.chunk.id, 0.0))) for h in hits]

    def _correct(self, question: str, qvec: np.ndarray, *, collection: str,
                 where: SearchFilter | None, cfg: RetrievalSettings, top_k: int | None,
                 trace: dict[str, Any], usage: dict[str, int],
                 vault: PiiVault | None = None) -> list[Knowledge]:
        query = question
        if self.settings.rewrite and self.rag.generator is not None:
            masked = vault.mask(question) if vault else question
            try:
                rewritten = self.rag.generator.generate(
                    [{"role": "user", "content": self.rag.prompts.render("rewrite",
                                                                           question=masked)}],
                    max_tokens=32)
                text = vault.unmask(rewritten.text) if vault else rewritten.text
                query = _clean_query(text) or question
                usage["prompt_tokens"] += rewritten.prompt_tokens
                usage["completion_tokens"] += rewritten.completion_tokens
            except GenerationError:
                pass
        trace["rewritten_query"] = query
        broad = cfg.model_copy(update={"mode": "hybrid", "fusion": "weighted",
                                       "dense_weight": self.settings.broaden_dense_weight,
                                       "candidates": self.settings.broaden_candidates})
        found: list[Knowledge] = []
        for name in [collection, *self.settings.siblings]:
            try:
                hits = self.rag.retrieve(query, collection=name, top_k=top_k, settings=broad,
                                         where=where)
            except NotFoundError:
                continue  # a sibling the caller's tenant does not have
            found += [_from_hit(h, 0.0) for h in hits]
        k = top_k or cfg.top_k
        for connector in self.connectors:
            for i, p in enumerate(connector.search(question, query=query, k=k)):
                found.append(Knowledge(document=f"{connector.name}: {p.title or p.url or i}",
                                       chunk_id=f"{connector.name}-{i}", text=p.text, score=0.0,
                                       order=(f"~{connector.name}", i), title=p.title))
        trace["corrective_results"] = len(found)
        # Evaluate again, against the question rather than the rewritten query, and on one
        # scale for re-retrieved chunks and connector passages alike: best first.
        _, scores = self._score_texts(question, qvec, [f"{k.title}. {k.text}" if k.title
                                                       else k.text for k in found])
        ranked = sorted(zip(found, scores, strict=True), key=lambda pair: -pair[1])
        return [replace(k, score=float(s)) for k, s in ranked]

    def _score_texts(self, question: str, qvec: np.ndarray, texts: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Each text's dense cosine with the question, and its relevance: the cosine, times
        term coverage when enabled."""
        if not texts:
            return np.zeros(0), np.zeros(0)
        cosines = self.rag.embedder.embed_documents(list(texts)) @ qvec
        if not self.settings.term_coverage:
            return cosines, cosines
        return cosines, cosines * term_coverage(question, texts)

    def _refine(self, question: str, qvec: np.ndarray, knowledge: list[Knowledge],
                trace: dict[str, Any]) -> list[Knowledge]:
        """Keep the strips relevant to the question, recomposed per source in document order.

        Called once for internal knowledge and once for corrective results; the
        trace adds up strips over both calls and keeps the best strip score.
        A strip is scored with its source's title in front (a sentence such as
        "He was a pianist" names its subject only there). A source that keeps
        any strip also keeps its first one, which usually says whom or what the
        source is about: without it, "was a retired barrister" from a namesake's
        page reads as an answer. Sources keep their retrieval rank: ordering
        them by their best strip put a namesake's sentence that merely shares
        the question's words ("giving occupation to the poor") first.
        """
        strips = [(k, j, s) for k in _dedupe(knowledge) for j, s in enumerate(split_strips(k.text))]
        trace["strips_total"] = trace.get("strips_total", 0) + len(strips)
        if not strips:
            trace.setdefault("strips_kept", 0)
            return []
        texts = [f"{k.title}. {s}" if k.title else s for k, _, s in strips]
        cosines, scores = self._score_texts(question, qvec, texts)
        # The answerability check reads the best strip's plain cosine: on SQuAD v2's held-out
        # half it separated unanswerable questions better than the coverage-weighted score.
        trace["best_strip"] = round(max(float(cosines.max()), trace.get("best_strip", -1.0)), 4)
        ranked = sorted(range(len(strips)), key=lambda i: -scores[i])
        keep = set([i for i in ranked if cosines[i] >= self.settings.strip_min]
                   [:self.settings.max_strips])
        sources = {strips[i][0].chunk_id for i in keep}
        keep |= {i for i, (k, j, _) in enumerate(strips) if j == 0 and k.chunk_id in sources}
        trace["strips_kept"] = trace.get("strips_kept", 0) + len(keep)
        by_source: dict[str, list[int]] = {}
        for i in sorted(keep):
            by_source.setdefault(strips[i][0].chunk_id, []).append(i)
        return [replace(strips[idx[0]][0], text=" ".join(strips[i][2] for i in idx),
                        score=float(max(scores[i] for i in idx)))
                for idx in by_source.values()]


# Words that ask rather than say what a question is about.
_QUESTION_WORDS = frozenset(analyze("what who whom whose which when where why how do does did s"))


def term_coverage(question: str, texts: Sequence[str]) -> np.ndarray:
    """Each text's share of the question's terms, weighted by how rare each is among ``texts``.

    A dense embedding places "Walter Köberle was an ice hockey player" close to
    "What is Walter Köbel's occupation?"; only the words tell them apart. Each
    of the question's BM25 terms (question words aside) weighs its inverse
    document frequency over ``texts``, ln(1 + n / (df + 0.5)), so the rare
    words (names) count most and a word no text contains lowers every text's
    coverage. With ``term_coverage`` on, the evaluator multiplies dense
    similarity by this share: on PopQA's first 100 questions that raised the
    AUC of "the answer is in the retrieved chunks" from 0.70 to 0.82, but not
    the bundled model's accuracy (docs/BENCHMARKS.md), so it is off by default.
    """
    terms = set(analyze(question)) - _QUESTION_WORDS
    if not terms or not texts:
        return np.ones(len(texts))
    bags = [set(analyze(t)) for t in texts]
    idf = {t: np.log1p(len(bags) / (sum(t in b for b in bags) + 0.5)) for t in terms}
    total = sum(idf.values())
    return np.array([sum(w for t, w in idf.items() if t in b) / total for b in bags])


def _dense_score(h: ScoredChunk) -> float | None:
    dense = [v for k, v in h.scores.items() if k.startswith("dense")]
    return dense[0] if dense else None


def _from_hit(h: ScoredChunk, score: float) -> Knowledge:
    return Knowledge(document=h.source, chunk_id=h.chunk.id, text=h.chunk.text, score=score,
                     order=(h.chunk.document_id, h.chunk.ordinal), page=h.chunk.page,
                     heading=h.chunk.heading, title=h.title)


def _dedupe(knowledge: list[Knowledge]) -> list[Knowledge]:
    seen: dict[str, Knowledge] = {}
    for k in knowledge:
        if k.chunk_id not in seen or k.score > seen[k.chunk_id].score:
            seen[k.chunk_id] = k
    return list(seen.values())


def _citations(knowledge: Sequence[Knowledge]) -> list[Citation]:
    return [Citation(n=i, document=k.document, chunk_id=k.chunk_id, text=k.text, page=k.page,
                     heading=k.heading, title=k.title) for i, k in enumerate(knowledge, start=1)]


def _clean_query(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.removeprefix("Query:").strip().strip('"').strip()[:300]
