"""API keys of the caller's tenant, for its admins: list, create, revoke."""

from __future__ import annotations

from service.protocol import CreatedKey, CreateKeyRequest, KeyList, KeyModel
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeyInfo, ApiKeys, Principal


def _model(k: ApiKeyInfo) -> KeyModel:
    return KeyModel(id=k.id, name=k.name, prefix=k.prefix, groups=list(k.groups), admin=k.is_admin,
                    created_at=k.created_at, revoked=k.revoked)


def list_keys(runtime: Runtime, principal: Principal) -> KeyList:
    """The tenant's keys, revoked ones included; never the keys themselves."""
    return KeyList(keys=[_model(k) for k in ApiKeys(runtime.db).list(tenant=principal.tenant)])


def create_key(runtime: Runtime, principal: Principal, request: CreateKeyRequest) -> CreatedKey:
    """A new key of the caller's tenant; the key is in the answer once and never again."""
    key, info = ApiKeys(runtime.db).create(tenant=principal.tenant, name=request.name,
                                           groups=tuple(dict.fromkeys(request.groups)),
                                           is_admin=request.admin)
    return CreatedKey(key=key, info=_model(info))


def revoke_key(runtime: Runtime, principal: Principal, key_id: int) -> None:
    """Revoke a key of the caller's tenant.

    Raises:
        NotFoundError: no such active key in the tenant (404).
    """
    ApiKeys(runtime.db).revoke(key_id, tenant=principal.tenant)
