from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service import feedback
from service.deps import AdminDep, PrincipalDep, RuntimeDep
from service.feedback_protocol import FeedbackList, FeedbackModel, FeedbackRequest
from service.protocol import COLLECTION_PATTERN, error_responses
from verity.core.types import FeedbackRating

router = APIRouter(tags=["feedback"])

_ERRORS = error_responses(400, 401, 403, 413, 422, 429, 503)
JSONL = "application/x-ndjson"


@router.post("/v1/feedback", status_code=201, response_model=FeedbackModel, responses=_ERRORS)
def post_feedback(request: FeedbackRequest, runtime: RuntimeDep,
                  principal: PrincipalDep) -> FeedbackModel:
    """Record a thumbs up or down on an answer, with an optional reason, comment and correction."""
    return feedback.record(runtime, principal, request)


@router.get("/v1/feedback", response_model=FeedbackList,
            responses={**_ERRORS, 200: {"content": {JSONL: {}}}})
def list_feedback(
    runtime: RuntimeDep,
    principal: AdminDep,
    rating: FeedbackRating | None = None,
    collection: Annotated[str | None, Query(min_length=1, max_length=64,
                                            pattern=COLLECTION_PATTERN)] = None,
    format: Annotated[Literal["json", "qa"], Query(
        description="json: pages of verdicts; qa: every verdict that can grade an answer, as a "
                    "`verity eval qa` JSONL dataset")] = "json",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> FeedbackList | Response:
    """The tenant's feedback, newest first (admin keys); or, with format=qa, a regression set."""
    if format == "qa":
        return Response(feedback.qa_dataset(runtime, principal, rating=rating,
                                            collection=collection), media_type=JSONL)
    return feedback.page(runtime, principal, rating=rating, collection=collection, limit=limit,
                         offset=offset)
