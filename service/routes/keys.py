from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from service import keys
from service.deps import AdminDep, RuntimeDep
from service.protocol import CreatedKey, CreateKeyRequest, KeyList, error_responses

router = APIRouter(tags=["keys"])

_ERRORS = error_responses(400, 401, 403, 404, 422, 429, 503)


@router.get("/v1/keys", response_model=KeyList, responses=_ERRORS)
def list_keys(runtime: RuntimeDep, principal: AdminDep) -> KeyList:
    """The tenant's API keys (admin keys): ids, names, prefixes, groups; never the keys."""
    return keys.list_keys(runtime, principal)


@router.post("/v1/keys", status_code=201, response_model=CreatedKey, responses=_ERRORS)
def create_key(request: CreateKeyRequest, runtime: RuntimeDep, principal: AdminDep) -> CreatedKey:
    """Create a key of the tenant (admin keys); the key is in this answer only."""
    return keys.create_key(runtime, principal, request)


@router.delete("/v1/keys/{key_id}", status_code=204, response_class=Response, responses=_ERRORS)
def revoke_key(key_id: Annotated[int, Path(ge=1, le=2**63 - 1)], runtime: RuntimeDep,
               principal: AdminDep) -> Response:
    """Revoke a key of the tenant (admin keys); it stops working at once."""
    keys.revoke_key(runtime, principal, key_id)
    return Response(status_code=204)
