"""Tuning a cross-encoder reranker on the user's own corpus, without labels.

No questions or judgements are read, only the collection's chunks:

1. **Pseudo-queries** come from each sampled chunk: its document's title (first
   chunk only) or its heading, else its first sentence; optionally one sentence
   from the middle of the chunk (the inverse cloze task of Lee et al., 2019); and
   optionally its last sentence, which in abstracts and reports is usually the
   finding ("X is associated with Y"), the shape of a claim or a factual question.
   A sentence used as a query is removed from the passage, so the model cannot
   learn to spot copied text.
2. **Positives** are the source chunks. **Hard negatives** are what BM25 and
   dense search return for the pseudo-query from *other* documents (and never a
   passage that contains the query verbatim); random chunks of other documents
   fill a group when search finds too few.
3. **Training** starts from the bundled all-MiniLM-L6-v2 encoder with a fresh
   one-logit head and minimises a listwise softmax cross-entropy over each group
   (positive first, then its negatives) or a binary cross-entropy per pair.

The functions here are pure apart from the two that touch the store
(:func:`store_searchers`) and the disk (:func:`save_model`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from verity.backends.rerankers import rerank_text
from verity.core.lexical import BM25_B, BM25_K1
from verity.core.sentences import split_sentences
from verity.core.types import ScoredChunk

if TYPE_CHECKING:
    from verity.core.protocols import Embedder, Store

log = logging.getLogger(__name__)

QueryKind = Literal["title", "heading", "first-sentence", "inner-sentence", "last-sentence"]
Loss = Literal["listwise", "bce"]
Search = Callable[[Sequence[str]], list[list[ScoredChunk]]]
"""Ranked hits for each of a batch of query texts."""

_MIN_WORDS, _MAX_WORDS = 4, 60


@dataclass(frozen=True, slots=True)
class PseudoQuery:
    """A query made from a chunk, and the passage it should find.

    ``positive`` is what the reranker reads for the source chunk (the query
    sentence removed); ``with_context`` says whether passages in its group keep
    their title or heading line (not for title and heading queries, which would
    otherwise be copied from the passage).
    """

    text: str
    kind: QueryKind
    positive: str
    chunk_id: str
    document_id: str
    with_context: bool = True


@dataclass(frozen=True, slots=True)
class TrainingGroup:
    """One pseudo-query with its positive passage and a fixed number of negatives."""

    query: str
    kind: QueryKind
    positive: str
    negatives: tuple[str, ...]
    document_id: str

    @property
    def passages(self) -> tuple[str, ...]:
        """The positive first, then the negatives."""
        return (self.positive, *self.negatives)


def passage_text(hit: ScoredChunk, *, with_context: bool, remove: str | None = None) -> str:
    """The passage a reranker reads for ``hit``, optionally without its context line or a sentence."""
    text = hit.chunk.text
    if remove:
        text = " ".join(text.replace(remove, " ", 1).split())
    if not with_context:
        return text
    return rerank_text(replace(hit, chunk=replace(hit.chunk, text=text)))


def _words(text: str) -> int:
    return len(text.split())


def _usable(sentence: str) -> bool:
    return _MIN_WORDS <= _words(sentence) <= _MAX_WORDS


def lead_query(hit: ScoredChunk) -> PseudoQuery | None:
    """The chunk's title (first chunk), heading, or first sentence as a query."""
    ids: dict[str, Any] = {"chunk_id": hit.chunk.id, "document_id": hit.chunk.document_id}
    heading = hit.chunk.heading.split(" > ")[-1].strip() if hit.chunk.heading else ""
    if heading and heading != hit.title and _words(heading) >= 2:
        return PseudoQuery(heading, "heading", passage_text(hit, with_context=False),
                           with_context=False, **ids)
    if hit.chunk.ordinal == 0 and _words(hit.title) >= 3:
        return PseudoQuery(hit.title, "title", passage_text(hit, with_context=False),
                           with_context=False, **ids)
    sentences = split_sentences(hit.chunk.text, collapse=False)
    if len(sentences) >= 2 and _usable(sentences[0]):
        return PseudoQuery(sentences[0], "first-sentence",
                           passage_text(hit, with_context=True, remove=sentences[0]), **ids)
    return None


def inner_query(hit: ScoredChunk, *, rng: random.Random) -> PseudoQuery | None:
    """A sentence from the middle of the chunk (not its first or last) as a query."""
    sentences = split_sentences(hit.chunk.text, collapse=False)
    middle = [s for s in sentences[1:-1] if _usable(s)]
    if not middle:
        return None
    sentence = rng.choice(middle)
    return PseudoQuery(sentence, "inner-sentence",
                       passage_text(hit, with_context=True, remove=sentence),
                       chunk_id=hit.chunk.id, document_id=hit.chunk.document_id)


def last_query(hit: ScoredChunk) -> PseudoQuery | None:
    """The chunk's last sentence (in an abstract, usually its conclusion) as a query."""
    sentences = split_sentences(hit.chunk.text, collapse=False)
    if len(sentences) < 3 or not _usable(sentences[-1]):
        return None
    return PseudoQuery(sentences[-1], "last-sentence",
                       passage_text(hit, with_context=True, remove=sentences[-1]),
                       chunk_id=hit.chunk.id, document_id=hit.chunk.document_id)


def pseudo_queries(chunks: Sequence[ScoredChunk], *, rng: random.Random,
                   inner_sentences: bool = True, last_sentences: bool = False) -> list[PseudoQuery]:
    """Every pseudo-query the chunks give, in chunk order."""
    queries: list[PseudoQuery] = []
    for hit in chunks:
        lead = lead_query(hit)
        inner = inner_query(hit, rng=rng) if inner_sentences else None
        last = last_query(hit) if last_sentences else None
        queries.extend(q for q in (lead, inner, last) if q is not None)
    return queries


def interleave(rankings: Sequence[Sequence[ScoredChunk]]) -> list[ScoredChunk]:
    """Round-robin merge of rankings, best ranks first, each chunk once."""
    seen: set[str] = set()
    merged: list[ScoredChunk] = []
    for tier in zip_longest(*rankings):
        for hit in tier:
            if hit is not None and hit.chunk.id not in seen:
                seen.add(hit.chunk.id)
                merged.append(hit)
    return merged


def hard_negatives(query: PseudoQuery, candidates: Sequence[ScoredChunk]) -> list[ScoredChunk]:
    """Candidates that may serve as negatives: other documents, not containing the query."""
    needle = query.text.lower()
    return [h for h in candidates
            if h.chunk.document_id != query.document_id and needle not in h.chunk.text.lower()]


def mine_groups(
    queries: Sequence[PseudoQuery], *, searchers: Sequence[Search], negatives: int,
    corpus: Sequence[ScoredChunk], rng: random.Random, depth: int = 20,
) -> list[TrainingGroup]:
    """One training group per pseudo-query, with ``negatives`` negatives each.

    Args:
        queries: the pseudo-queries.
        searchers: retrievers run on every query text (e.g. BM25 and dense).
        negatives: negatives per group.
        corpus: chunks to draw random negatives from when search finds too few.
        rng: the source of randomness (sampling among the top ``depth`` candidates).
        depth: how many merged candidates to sample hard negatives from.

    Returns:
        Groups in query order. No negative comes from the query's own document.
    """
    texts = [q.text for q in queries]
    results = [search(texts) for search in searchers]
    groups = []
    for i, query in enumerate(queries):
        pool = hard_negatives(query, interleave([r[i] for r in results]))[:depth]
        chosen = rng.sample(pool, min(negatives, len(pool)))
        chosen += _random_negatives(query, corpus, n=negatives - len(chosen),
                                    taken={h.chunk.id for h in chosen}, rng=rng)
        if len(chosen) < negatives:
            continue
        groups.append(TrainingGroup(
            query=query.text, kind=query.kind, positive=query.positive,
            negatives=tuple(passage_text(h, with_context=query.with_context) for h in chosen),
            document_id=query.document_id))
    return groups


def _random_negatives(query: PseudoQuery, corpus: Sequence[ScoredChunk], *, n: int,
                      taken: set[str], rng: random.Random) -> list[ScoredChunk]:
    if n <= 0:
        return []
    others = [h for h in hard_negatives(query, corpus) if h.chunk.id not in taken]
    return rng.sample(others, min(n, len(others)))


def split_by_document(groups: Sequence[TrainingGroup], *, heldout: int,
                      rng: random.Random) -> tuple[list[TrainingGroup], list[TrainingGroup]]:
    """(train, held-out): up to ``heldout`` groups, at most half, whose documents are never trained on.

    Whole documents are held out, picked in a random order; one whose groups
    would overshoot the limit is skipped for a smaller one.
    """
    per_document = Counter(g.document_id for g in groups)
    documents = sorted(per_document)
    rng.shuffle(documents)
    limit = min(heldout, len(groups) // 2)
    held: set[str] = set()
    count = 0
    for doc in documents:
        if count + per_document[doc] <= limit:
            held.add(doc)
            count += per_document[doc]
    return ([g for g in groups if g.document_id not in held],
            [g for g in groups if g.document_id in held])


def store_searchers(store: Store, embedder: Embedder, *, collection: str, depth: int,
                    k1: float = BM25_K1, b: float = BM25_B) -> list[Search]:
    """BM25 and dense search over ``collection``, each returning ``depth`` hits per query.

    Dense search embeds the pseudo-queries in batches with ``embed_documents``:
    mining needs near neighbours, not the query-side prompt some models use.
    """

    def bm25(texts: Sequence[str]) -> list[list[ScoredChunk]]:
        return [store.search_lexical(collection=collection, query=t, top_k=depth, k1=k1, b=b)
                for t in texts]

    def dense(texts: Sequence[str]) -> list[list[ScoredChunk]]:
        vectors = embedder.embed_documents(list(texts))
        return [store.search_dense(collection=collection, query=v, top_k=depth) for v in vectors]

    return [bm25, dense]


def new_cross_encoder(base: str, *, max_length: int, seed: int, device: str | None = None) -> Any:
    """A ``CrossEncoder`` from an encoder's weights (e.g. the bundled MiniLM) with a fresh 1-logit head."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    return CrossEncoder(base, num_labels=1, max_length=max_length, device=device)


def batches(groups: Sequence[TrainingGroup], *, size: int, epochs: int,
            rng: random.Random) -> Iterator[list[TrainingGroup]]:
    """``epochs`` passes over the groups in a fresh shuffled order each, ``size`` groups a batch."""
    for _ in range(epochs):
        order = list(groups)
        rng.shuffle(order)
        for start in range(0, len(order), size):
            yield order[start:start + size]


def group_loss(model: Any, batch: Sequence[TrainingGroup], *, loss: Loss) -> Any:
    """The loss of one batch of groups (a scalar tensor with gradients)."""
    import torch
    from sentence_transformers.util import batch_to_device

    width = len(batch[0].passages)
    pairs = [(g.query, p) for g in batch for p in g.passages]
    features = batch_to_device(model.preprocess(pairs), model.device)
    logits = model(features)["scores"].view(len(batch), width).float()
    if loss == "listwise":
        target = torch.zeros(len(batch), dtype=torch.long, device=logits.device)
        return torch.nn.functional.cross_entropy(logits, target)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    weight = torch.tensor(float(width - 1), device=logits.device)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)


def train_cross_encoder(
    model: Any, groups: Sequence[TrainingGroup], *, epochs: int = 1, batch_groups: int = 4,
    learning_rate: float = 1e-4, loss: Loss = "listwise", seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Fine-tune ``model`` in place on ``groups``; returns the loss of every step.

    AdamW with a linear warm-up over the first 10% of steps and linear decay,
    gradients clipped to norm 1.

    Args:
        model: a sentence-transformers ``CrossEncoder`` with one output.
        groups: training groups, all with the same number of negatives.
        epochs: passes over the groups.
        batch_groups: groups per optimiser step (each is 1 + negatives pairs).
        learning_rate: peak learning rate.
        loss: ``listwise`` (softmax cross-entropy, positive vs its negatives) or ``bce``.
        seed: fixes the order of batches.
        on_step: called as ``on_step(step, total_steps, loss)`` after every step.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    if not groups:
        raise ValueError("no training groups: the collection gave no usable pseudo-queries")
    total = epochs * math.ceil(len(groups) / batch_groups)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(
        optimizer, max(1, total // 10), total)
    curve: list[float] = []
    model.train()
    try:
        for step, batch in enumerate(batches(groups, size=batch_groups, epochs=epochs,
                                             rng=random.Random(seed)), start=1):
            value = group_loss(model, batch, loss=loss)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append(float(value.detach()))
            if on_step:
                on_step(step, total, curve[-1])
    finally:
        model.eval()
    return curve


def mean_reciprocal_rank(model: Any, groups: Sequence[TrainingGroup], *,
                         batch_size: int = 32) -> float:
    """MRR of each group's positive among its passages, as ranked by ``model``.

    Ties count against the positive.
    """
    if not groups:
        return 0.0
    pairs = [(g.query, p) for g in groups for p in g.passages]
    scores = model.predict(pairs, batch_size=batch_size, show_progress_bar=False,
                           convert_to_numpy=True)
    total, offset = 0.0, 0
    for g in groups:
        row = scores[offset:offset + len(g.passages)]
        offset += len(g.passages)
        total += 1.0 / (1 + sum(1 for s in row[1:] if s >= row[0]))
    return total / len(groups)


def smooth(curve: Sequence[float], *, points: int = 50) -> list[float]:
    """The loss curve averaged over at most ``points`` equal windows."""
    if not curve:
        return []
    size = max(1, math.ceil(len(curve) / points))
    return [round(sum(curve[i:i + size]) / len(curve[i:i + size]), 4)
            for i in range(0, len(curve), size)]


def save_model(model: Any, out: Path, *, report: dict[str, Any],
               heldout: Sequence[TrainingGroup] = ()) -> None:
    """Save ``model``, ``training_report.json`` and the held-out groups to ``out``.

    The held-out groups (``heldout.jsonl``: query, kind, positive, negatives,
    document id) come from documents the model never trained on, so they can be
    used later to choose settings such as the reranker's interpolation weight.

    What was there is replaced only once the new copy is complete, so a killed
    run never leaves a half-written model for the service to load.
    """
    import os
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))
    (partial / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (partial / HELDOUT_NAME).write_text(
        "".join(json.dumps(asdict(g)) + "\n" for g in heldout), encoding="utf-8")
    if out.exists():
        out.rename(old)
    partial.rename(out)
    shutil.rmtree(old, ignore_errors=True)


REPORT_NAME = "training_report.json"
HELDOUT_NAME = "heldout.jsonl"


def load_heldout(directory: Path) -> list[TrainingGroup]:
    """The held-out groups :func:`save_model` wrote to ``directory`` (none if it wrote none)."""
    path = directory / HELDOUT_NAME
    if not path.is_file():
        return []
    groups = []
    for line in path.read_text(encoding="utf-8").splitlines():
        raw = json.loads(line)
        groups.append(TrainingGroup(query=raw["query"], kind=raw["kind"], positive=raw["positive"],
                                    negatives=tuple(raw["negatives"]),
                                    document_id=raw["document_id"]))
    return groups


@dataclass(frozen=True, slots=True)
class TuneOptions:
    """How ``verity tune reranker`` mines and trains.

    ``max_pairs`` caps the (query, passage) pairs trained on: each group is one
    positive plus ``negatives`` negatives, so it gives ``max_pairs // (1 +
    negatives)`` training groups. ``heldout`` more groups, from documents never
    trained on, measure MRR before and after.
    """

    max_pairs: int = 6000
    epochs: int = 1
    negatives: int = 3
    batch_groups: int = 4
    learning_rate: float = 1e-4
    loss: Loss = "listwise"
    max_length: int = 256
    heldout: int = 100
    depth: int = 20
    inner_sentences: bool = True
    last_sentences: bool = False
    seed: int = 0
    bm25_k1: float = BM25_K1
    bm25_b: float = BM25_B


@dataclass(frozen=True, slots=True)
class MinedData:
    train: list[TrainingGroup]
    heldout: list[TrainingGroup]
    chunks_sampled: int
    seconds: float


def mine_training_data(store: Store, embedder: Embedder, *, collection: str,
                       options: TuneOptions) -> MinedData:
    """Sample chunks, make pseudo-queries and mine their groups; split off the held-out part."""
    started = time.perf_counter()
    rng = random.Random(options.seed)
    wanted = options.max_pairs // (1 + options.negatives) + options.heldout
    per_chunk = 1 + int(options.inner_sentences) + int(options.last_sentences)
    chunks = store.sample_chunks(collection=collection, limit=math.ceil(1.5 * wanted / per_chunk)
                                 + 4 * options.negatives, seed=str(options.seed))
    queries = pseudo_queries(chunks, rng=rng, inner_sentences=options.inner_sentences,
                             last_sentences=options.last_sentences)[:wanted]
    log.info("%d pseudo-queries from %d chunks; mining negatives", len(queries), len(chunks))
    searchers = store_searchers(store, embedder, collection=collection, depth=options.depth,
                                k1=options.bm25_k1, b=options.bm25_b)
    groups = mine_groups(queries, searchers=searchers, negatives=options.negatives, corpus=chunks,
                         rng=rng, depth=options.depth)
    train, heldout = split_by_document(groups, heldout=options.heldout, rng=rng)
    return MinedData(train[:options.max_pairs // (1 + options.negatives)], heldout, len(chunks),
                     time.perf_counter() - started)


def tune_reranker(
    store: Store, embedder: Embedder, *, collection: str, base_model: str, out: Path,
    options: TuneOptions, on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Mine pseudo-labelled groups from ``collection``, fine-tune, evaluate and save.

    Args:
        store: the store holding the collection.
        embedder: the collection's embedder (for dense hard-negative mining).
        collection: the collection to learn from; nothing else is read.
        base_model: path or id of the encoder to start from (a fresh head is added).
        out: the folder the model and ``training_report.json`` are saved to.
        options: mining and training settings.
        on_step: progress callback, as for :func:`train_cross_encoder`.

    Returns:
        The training report that was saved with the model.

    Raises:
        ValueError: the collection gave no usable pseudo-queries.
        NotFoundError: the collection does not exist.
    """
    data = mine_training_data(store, embedder, collection=collection, options=options)
    model = new_cross_encoder(base_model, max_length=options.max_length, seed=options.seed)
    before = mean_reciprocal_rank(model, data.heldout)
    started = time.perf_counter()
    curve = train_cross_encoder(model, data.train, epochs=options.epochs,
                                batch_groups=options.batch_groups,
                                learning_rate=options.learning_rate, loss=options.loss,
                                seed=options.seed, on_step=on_step)
    seconds = time.perf_counter() - started
    after = mean_reciprocal_rank(model, data.heldout)
    report = training_report(data, options=options, collection=collection, base_model=base_model,
                             curve=curve, seconds=seconds, mrr=(before, after))
    save_model(model, out, report=report, heldout=data.heldout)
    return report


def training_report(data: MinedData, *, options: TuneOptions, collection: str, base_model: str,
                    curve: Sequence[float], seconds: float,
                    mrr: tuple[float, float]) -> dict[str, Any]:
    """What ``training_report.json`` records about a run."""
    width = 1 + options.negatives
    return {
        "source_collection": collection,
        "base_model": base_model,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "groups": len(data.train),
        "pairs": len(data.train) * width,
        "query_kinds": dict(Counter(g.kind for g in data.train)),
        "chunks_sampled": data.chunks_sampled,
        "epochs": options.epochs,
        "steps": len(curve),
        "seconds": {"mining": round(data.seconds, 1), "training": round(seconds, 1)},
        "loss_curve": smooth(curve),
        "heldout": {"queries": len(data.heldout), "candidates_per_query": width,
                    "mrr_before": round(mrr[0], 4), "mrr_after": round(mrr[1], 4)},
        "options": asdict(options),
    }
