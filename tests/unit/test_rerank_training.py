"""Pseudo-query generation and hard-negative mining over an in-memory corpus."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from tests.fakes import overlap
from verity.core.sentences import split_sentences
from verity.core.types import Chunk, ScoredChunk
from verity.tuner.reranker import (
    TrainingGroup,
    interleave,
    mine_groups,
    pseudo_queries,
    smooth,
    split_by_document,
)

pytestmark = pytest.mark.unit

DOCS = {
    "scurvy": ("Citrus fruit and scurvy at sea", [
        "Scurvy killed many sailors on long voyages. Sailors lacked fresh fruit and vegetables "
        "for months. Lemon juice given daily prevented the disease in the fleet. The navy "
        "made citrus rations compulsory in 1795.",
    ]),
    "rickets": ("Vitamin D deficiency and rickets in children", [
        "Rickets softens and weakens the bones of children. Too little vitamin D from sunlight "
        "or food is the usual cause. Cod liver oil was a common remedy in cities. Cases fell "
        "sharply once milk was fortified.",
    ]),
    "beriberi": ("Thiamine and beriberi", [
        "Beriberi follows a diet of polished white rice. Polishing removes the thiamine held in "
        "the bran of the grain. Sailors in the Japanese navy suffered from it until rations "
        "changed. Adding barley and meat to the rations ended the outbreaks.",
    ]),
    "pellagra": ("Pellagra and niacin in maize diets", [
        "Pellagra was common where maize was the staple food. Niacin in untreated maize cannot "
        "be absorbed by the gut. Nixtamalisation with lime releases the niacin for the body. "
        "Diets with more meat and milk cured it.",
    ]),
    "handbook": ("Employee handbook", [
        "Staff may take up to twenty days of leave each year. Requests go to the line manager "
        "two weeks ahead. Unused days carry over until March. Sick leave is recorded "
        "separately from holidays.",
    ]),
    "sailing": ("Navigation on long voyages", [
        "Sailors on long voyages fixed their position with a sextant. Chronometers made the "
        "longitude problem tractable at sea. Charts were corrected after every voyage. Fresh "
        "fruit for the sailors was loaded at every port.",
    ]),
}


def _corpus() -> list[ScoredChunk]:
    hits = []
    for doc, (title, texts) in DOCS.items():
        for i, text in enumerate(texts):
            heading = "Leave > Carrying over unused days" if doc == "handbook" else ""
            hits.append(ScoredChunk(chunk=Chunk(id=f"{doc}-{i}", document_id=doc, ordinal=i,
                                                text=text, heading=heading),
                                    score=0.0, source=f"{doc}.md", title=title))
    return hits


class OverlapSearch:
    """A tiny real retriever (word overlap) that records every query text it is given."""

    def __init__(self, corpus: Sequence[ScoredChunk]) -> None:
        self.corpus = corpus
        self.seen: list[str] = []

    def __call__(self, texts: Sequence[str]) -> list[list[ScoredChunk]]:
        self.seen.extend(texts)
        return [sorted(self.corpus, key=lambda h: (-overlap(t, f"{h.title} {h.chunk.text}"),
                                                   h.chunk.id)) for t in texts]


def _source_text(document_id: str) -> str:
    title, texts = DOCS[document_id]
    return " ".join([title, "Leave > Carrying over unused days", *texts])


def test_sentences_split_at_full_stops_before_capitals() -> None:
    assert split_sentences("One a.b. two. Three? 4 four! (Five)") == [
        "One a.b. two.", "Three?", "4 four!", "(Five)"]


def test_pseudo_queries_come_from_the_chunks_only_and_leave_their_passage() -> None:
    queries = pseudo_queries(_corpus(), rng=random.Random(0))
    kinds = {q.kind for q in queries}
    assert kinds == {"title", "heading", "inner-sentence"}
    for q in queries:
        assert q.text in _source_text(q.document_id)
        assert q.text not in q.positive  # the query sentence or title is not left to copy
    heading = next(q for q in queries if q.kind == "heading")
    assert heading.text == "Carrying over unused days" and not heading.with_context


def test_first_sentence_is_used_when_there_is_no_title_or_heading() -> None:
    chunk = _corpus()[0]
    untitled = ScoredChunk(chunk=chunk.chunk, score=0.0, source="x.txt", title="x")
    [lead] = pseudo_queries([untitled], rng=random.Random(0), inner_sentences=False)
    assert lead.kind == "first-sentence"
    assert lead.text == "Scurvy killed many sailors on long voyages."
    assert lead.positive.startswith("x\nSailors lacked fresh fruit")


def test_last_sentences_give_claim_like_queries_removed_from_their_passage() -> None:
    queries = pseudo_queries(_corpus(), rng=random.Random(0), inner_sentences=False,
                             last_sentences=True)
    last = [q for q in queries if q.kind == "last-sentence"]
    assert len(last) == len(DOCS)  # every chunk has four sentences
    scurvy = next(q for q in last if q.document_id == "scurvy")
    assert scurvy.text == "The navy made citrus rations compulsory in 1795."
    assert scurvy.positive == ("Citrus fruit and scurvy at sea\nScurvy killed many sailors on long "
                               "voyages. Sailors lacked fresh fruit and vegetables for months. "
                               "Lemon juice given daily prevented the disease in the fleet.")
    assert all(q.text not in q.positive for q in last)


def test_negatives_are_hard_from_other_documents_and_never_contain_the_query() -> None:
    corpus = _corpus()
    search = OverlapSearch(corpus)
    queries = pseudo_queries(corpus, rng=random.Random(0))
    groups = mine_groups(queries, searchers=[search], negatives=3, corpus=corpus,
                         rng=random.Random(0), depth=4)
    assert len(groups) == len(queries)
    doc_of = {_text: h.chunk.document_id for h in corpus
              for _text in (h.chunk.text, f"{h.title}\n{h.chunk.text}",
                            f"{h.chunk.heading}\n{h.chunk.text}")}
    for group in groups:
        assert len(group.negatives) == 3 and len(set(group.negatives)) == 3
        assert all(doc_of[n] != group.document_id for n in group.negatives)
        assert all(group.query.lower() not in n.lower() for n in group.negatives)
    # Only pseudo-queries made from the corpus were ever searched for.
    assert search.seen == [q.text for q in queries]
    scurvy = next(g for g in groups if g.query == "Citrus fruit and scurvy at sea")
    assert any("Sailors on long voyages fixed" in n for n in scurvy.negatives)


def test_random_negatives_fill_groups_when_search_finds_too_few() -> None:
    corpus = _corpus()
    queries = pseudo_queries(corpus[:1], rng=random.Random(0))

    def nothing(texts: Sequence[str]) -> list[list[ScoredChunk]]:
        return [[] for _ in texts]

    groups = mine_groups(queries, searchers=[nothing], negatives=5, corpus=corpus,
                         rng=random.Random(1))
    assert groups and all(len(g.negatives) == 5 for g in groups)
    assert all("Scurvy killed" not in n for g in groups for n in g.negatives)


def test_interleave_takes_ranks_in_turn_without_repeats() -> None:
    corpus = _corpus()
    a, b, c = corpus[:3]
    assert [h.chunk.id for h in interleave([[a, b], [b, c]])] == [a.chunk.id, b.chunk.id, c.chunk.id]


def test_held_out_groups_share_no_document_with_training() -> None:
    groups = [TrainingGroup(query=f"q{i}", kind="title", positive="p", negatives=("n",),
                            document_id=f"d{i % 7}") for i in range(40)]
    train, held = split_by_document(groups, heldout=10, rng=random.Random(0))
    assert len(train) + len(held) == 40 and 5 <= len(held) <= 10
    assert not {g.document_id for g in train} & {g.document_id for g in held}
    few = groups[:3]
    train, held = split_by_document(few, heldout=10, rng=random.Random(0))
    assert len(held) == 1 and len(train) == 2  # never more than half


def test_loss_curve_is_averaged_into_windows() -> None:
    assert smooth([1.0, 3.0, 5.0, 7.0], points=2) == [2.0, 6.0]
    assert smooth([]) == []


def test_a_first_sentence_with_abbreviations_is_a_query_and_leaves_its_passage() -> None:
    text = ("Dr. J. Lind gave  citrus fruit to sailors with scurvy.\nThose given oranges "
            "recovered first. The others did not recover.")
    hit = ScoredChunk(chunk=Chunk(id="lind-0", document_id="lind", ordinal=0, text=text),
                      score=0.0, source="lind.txt", title="x")
    [lead] = pseudo_queries([hit], rng=random.Random(0), inner_sentences=False)
    assert lead.text == "Dr. J. Lind gave  citrus fruit to sailors with scurvy."
    assert lead.positive == "x\nThose given oranges recovered first. The others did not recover."
