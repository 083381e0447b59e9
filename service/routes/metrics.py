from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import MetricsDep

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text exposition format"}})
def metrics(metrics: MetricsDep) -> Response:
    """Request, pipeline-stage, token, answer and ingestion-job metrics for Prometheus."""
    body, content_type = metrics.render()
    return Response(content=body, media_type=content_type)
