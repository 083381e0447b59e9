"""Tiny dependency getters for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.limits import ModelQueue, RateLimiter
from service.metrics import Metrics
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys, Principal
from verity.core.errors import AuthError, ForbiddenError


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def get_model_queue(request: Request) -> ModelQueue:
    queue: ModelQueue = request.app.state.model_queue
    return queue


ModelQueueDep = Annotated[ModelQueue, Depends(get_model_queue)]


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller, from ``Authorization: Bearer KEY`` or ``X-API-Key``; rate-limited per key.

    With auth off (``verity serve --dev``) every caller is the unrestricted
    admin of the ``default`` tenant.

    Raises:
        AuthError: auth is on and no valid key was presented (401).
        RateLimitError: the key used up its rate (429).
    """
    limiter: RateLimiter = request.app.state.rate_limiter
    if not runtime.settings.server.auth:
        limiter.check(f"ip:{request.client.host if request.client else '-'}")
        principal = Principal(tenant="default", groups=None, is_admin=True)
    else:
        principal = _authenticate(request, runtime)
        limiter.check(f"key:{principal.key_id}")
    request.state.tenant = principal.tenant  # for the access log
    return principal


def _authenticate(request: Request, runtime: Runtime) -> Principal:
    key = _presented_key(request)
    if key is None:
        raise AuthError("an API key is required: send 'Authorization: Bearer KEY'")
    principal = ApiKeys(runtime.db).authenticate(key)
    if principal is None:
        raise AuthError("invalid or revoked API key")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ForbiddenError("this needs an admin key of the tenant")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
