"""Wire models of feedback on answers (``POST``/``GET /v1/feedback``), converted at the edge."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from service.protocol import _NO_NUL, COLLECTION_PATTERN, _Request
from verity.core.types import AnswerStatus, Feedback, FeedbackRating, FeedbackReason


class FeedbackRequest(_Request):
    rating: FeedbackRating = Field(description="up: a good answer; down: a bad one")
    question: str = Field(min_length=1, max_length=4000, pattern=_NO_NUL)
    answer: str = Field(max_length=20_000, pattern=_NO_NUL, description="the answer as shown")
    collection: str = Field(min_length=1, max_length=64, pattern=COLLECTION_PATTERN)
    answer_status: AnswerStatus = "answered"
    reason: FeedbackReason | None = Field(
        default=None, description="why it was marked down: wrong, incomplete, unsupported (a "
                                  "citation does not say it), should_abstain, should_answer, other")
    comment: str = Field(default="", max_length=2000, pattern=_NO_NUL)
    correct_answer: str = Field(
        default="", max_length=4000, pattern=_NO_NUL,
        description="the right answer; it becomes the gold answer of the exported dataset")
    citations: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    trace: dict[str, Any] = Field(default_factory=dict)

    @field_validator("citations", "trace")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return storable_json(value)

    def to_feedback(self, *, tenant: str, key_id: int | None) -> Feedback:
        return Feedback(tenant=tenant, collection=self.collection, rating=self.rating,
                        question=self.question, answer=self.answer, reason=self.reason,
                        comment=self.comment, correct_answer=self.correct_answer,
                        answer_status=self.answer_status, citations=tuple(self.citations),
                        trace=self.trace, key_id=key_id)


def storable_json(value: Any) -> Any:
    """``value`` as PostgreSQL's jsonb can hold it: NUL characters dropped, NaN and infinities
    as null. Feedback keeps what a client sent about an answer; refusing a whole verdict for
    a stray character in its trace would lose it."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {storable_json(k): storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_json(v) for v in value]
    return value


class FeedbackModel(BaseModel):
    id: str
    collection: str
    rating: FeedbackRating
    reason: FeedbackReason | None
    comment: str
    correct_answer: str
    question: str
    answer: str
    answer_status: AnswerStatus
    citations: list[dict[str, Any]]
    trace: dict[str, Any]
    created_at: datetime | None

    @classmethod
    def of(cls, f: Feedback) -> FeedbackModel:
        return cls(id=f.id, collection=f.collection, rating=f.rating, reason=f.reason,
                   comment=f.comment, correct_answer=f.correct_answer, question=f.question,
                   answer=f.answer, answer_status=f.answer_status, citations=list(f.citations),
                   trace=f.trace, created_at=f.created_at)


class FeedbackList(BaseModel):
    feedback: list[FeedbackModel] = Field(description="newest first")
    total: int
    limit: int
    offset: int
