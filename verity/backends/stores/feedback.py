"""Feedback on answers: the ``feedback`` table, written by the service, read by the export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from verity.backends.stores.database import Database
from verity.core.types import Feedback, FeedbackRating

_COLUMNS = """
id::text, tenant, collection, rating, reason, comment, correct_answer, question, answer,
answer_status, citations, trace, key_id, created_at
"""

INSERT_FEEDBACK = f"""
INSERT INTO feedback (tenant, collection, rating, reason, comment, correct_answer, question,
                      answer, answer_status, citations, trace, key_id)
VALUES (%(tenant)s, %(collection)s, %(rating)s, %(reason)s, %(comment)s, %(correct_answer)s,
        %(question)s, %(answer)s, %(answer_status)s, %(citations)s, %(trace)s, %(key_id)s)
RETURNING {_COLUMNS}
"""

_WHERE = """
WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
  AND (%(rating)s::text IS NULL OR rating = %(rating)s)
  AND (%(collection)s::text IS NULL OR collection = %(collection)s)
"""

LIST_FEEDBACK = f"""
SELECT {_COLUMNS} FROM feedback {_WHERE}
ORDER BY created_at DESC, id LIMIT %(limit)s OFFSET %(offset)s
"""

COUNT_FEEDBACK = f"SELECT count(*) FROM feedback {_WHERE}"

# Oldest first, for exports: a dataset keeps its order as feedback is added.
ALL_FEEDBACK = f"SELECT {_COLUMNS} FROM feedback {_WHERE} ORDER BY created_at, id"


class FeedbackStore:
    """Feedback rows of every tenant; callers scope reads to a tenant.

    Example:
        >>> store = FeedbackStore(db)
        >>> saved = store.add(Feedback(tenant="acme", collection="docs", rating="down",
        ...                            question="Who?", answer="Sam [1]", correct_answer="Alex"))
        >>> store.page(tenant="acme", rating="down")[1]
        1
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, feedback: Feedback) -> Feedback:
        """Store a verdict; returns it with its id and time."""
        params = {
            "tenant": feedback.tenant, "collection": feedback.collection,
            "rating": feedback.rating, "reason": feedback.reason, "comment": feedback.comment,
            "correct_answer": feedback.correct_answer, "question": feedback.question,
            "answer": feedback.answer, "answer_status": feedback.answer_status,
            "citations": json.dumps(list(feedback.citations)), "trace": json.dumps(feedback.trace),
            "key_id": feedback.key_id,
        }
        with self._db.pool.connection() as conn:
            row = conn.execute(INSERT_FEEDBACK, params).fetchone()
        assert row is not None
        return _feedback(row)

    def page(self, *, tenant: str | None, rating: FeedbackRating | None = None,
             collection: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[Feedback], int]:
        """One page of verdicts, newest first, and how many match in all.

        Args:
            tenant: only this tenant's; None for every tenant (the command line's export).
            rating: only ``up`` or only ``down``.
            collection: only those about this collection.
            limit: the page size.
            offset: verdicts to skip.
        """
        where = {"tenant": tenant, "rating": rating, "collection": collection}
        with self._db.pool.connection() as conn:
            rows = conn.execute(LIST_FEEDBACK, {**where, "limit": limit, "offset": offset}).fetchall()
            total = conn.execute(COUNT_FEEDBACK, where).fetchone()
        return [_feedback(r) for r in rows], int(total[0]) if total else 0

    def iterate(self, *, tenant: str | None, rating: FeedbackRating | None = None,
                collection: str | None = None) -> Iterator[Feedback]:
        """Every matching verdict, oldest first (an export)."""
        where = {"tenant": tenant, "rating": rating, "collection": collection}
        with self._db.pool.connection() as conn, conn.cursor() as cur:
            for row in cur.execute(ALL_FEEDBACK, where):
                yield _feedback(row)


def _feedback(row: tuple[Any, ...]) -> Feedback:
    return Feedback(id=row[0], tenant=row[1], collection=row[2], rating=row[3], reason=row[4],
                    comment=row[5], correct_answer=row[6], question=row[7], answer=row[8],
                    answer_status=row[9], citations=tuple(row[10]), trace=dict(row[11]),
                    key_id=row[12], created_at=row[13])
