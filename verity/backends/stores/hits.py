"""Hit rows read from PostgreSQL, and hits found by an index beside it (tantivy, the in-memory
dense index) fetched from PostgreSQL under the caller's filter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from verity.backends.stores import pgvector_sql as q
from verity.backends.stores.filters import compile_filter
from verity.core.types import Chunk, ScoredChunk, SearchFilter


def visible_hits(conn: psycopg.Connection[Any], *, cid: int, scores: Sequence[tuple[str, float]],
                 where: SearchFilter | None, stage: str) -> list[ScoredChunk]:
    """Hits for an index's ``(chunk id, score)`` pairs, in their order, that ``where`` allows.

    The filter is applied again here: a chunk whose ACL changed since the index last caught
    up is never returned on the index's word.
    """
    visible, filter_params = compile_filter(where)
    rows = conn.execute(q.fetch_visible_hits(visible=visible), {
        "collection_id": cid, "ids": [c for c, _ in scores], **filter_params}).fetchall()
    return in_order(rows, scores=scores, stage=stage)


def scored_hit(row: tuple[Any, ...], *, stage: str) -> ScoredChunk:
    chunk = Chunk(id=row[0], document_id=row[1], ordinal=row[2], text=row[3], heading=row[4],
                  page=row[5], token_count=row[6])
    score = float(row[9])
    return ScoredChunk(chunk=chunk, score=score, source=row[7], title=row[8],
                       scores={stage: score})


def in_order(rows: Sequence[tuple[Any, ...]], *, scores: Sequence[tuple[str, float]],
              stage: str) -> list[ScoredChunk]:
    """Hits for ``(chunk id, score)`` pairs from hit rows, in the pairs' order; ids without a row
    are skipped."""
    found = {row[0]: row for row in rows}
    return [scored_hit((*found[c][:9], s), stage=stage) for c, s in scores if c in found]
