"""Feedback on answers for the routes: stored per tenant, read back by the tenant's admins."""

from __future__ import annotations

import json

from service.feedback_protocol import FeedbackList, FeedbackModel, FeedbackRequest
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import Principal
from verity.backends.stores.feedback import FeedbackStore
from verity.core.types import FeedbackRating


def record(runtime: Runtime, principal: Principal, request: FeedbackRequest) -> FeedbackModel:
    """Store a verdict on an answer, in the caller's tenant."""
    saved = FeedbackStore(runtime.db).add(
        request.to_feedback(tenant=principal.tenant, key_id=principal.key_id))
    return FeedbackModel.of(saved)


def page(runtime: Runtime, principal: Principal, *, rating: FeedbackRating | None,
         collection: str | None, limit: int, offset: int) -> FeedbackList:
    """One page of the tenant's feedback, newest first."""
    found, total = FeedbackStore(runtime.db).page(tenant=principal.tenant, rating=rating,
                                                  collection=collection, limit=limit, offset=offset)
    return FeedbackList(feedback=[FeedbackModel.of(f) for f in found], total=total, limit=limit,
                        offset=offset)


def qa_dataset(runtime: Runtime, principal: Principal, *, rating: FeedbackRating | None,
               collection: str | None) -> str:
    """The tenant's feedback that can grade an answer, as ``verity eval qa`` JSON lines."""
    records = (f.qa_record() for f in FeedbackStore(runtime.db).iterate(
        tenant=principal.tenant, rating=rating, collection=collection))
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records if r is not None)
