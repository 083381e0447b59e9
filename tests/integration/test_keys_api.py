"""API keys managed over HTTP by a tenant's admins (GET, POST /v1/keys, DELETE /v1/keys/{id})."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.clients import bearer, keyed_client
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(retrieval_runtime: Runtime) -> Iterator[TestClient]:
    with keyed_client(retrieval_runtime) as c:
        yield c


def test_admins_create_list_and_revoke_their_tenants_keys_only(
    client: TestClient, retrieval_runtime: Runtime
) -> None:
    tenant = f"keys-{uuid.uuid4().hex[:8]}"
    api_keys = ApiKeys(retrieval_runtime.db)
    admin = api_keys.create(tenant=tenant, is_admin=True)[0]
    user = api_keys.create(tenant=tenant)[0]
    outsider = api_keys.create(tenant=f"other-{tenant}", is_admin=True)[0]

    assert client.get("/v1/keys", headers=bearer(user)).status_code == 403
    assert client.post("/v1/keys", headers=bearer(user), json={}).status_code == 403
    r = client.post("/v1/keys", headers=bearer(admin),
                    json={"name": "hr app", "groups": ["hr", "hr"], "admin": False})
    assert r.status_code == 201, r.text
    created = r.json()
    new_key, info = created["key"], created["info"]
    assert info["name"] == "hr app" and info["groups"] == ["hr"] and not info["admin"]
    assert new_key.startswith(info["prefix"]) and not info["revoked"]
    assert client.get("/v1/collections", headers=bearer(new_key)).status_code == 200

    listed = client.get("/v1/keys", headers=bearer(admin)).json()["keys"]
    assert [k["name"] for k in listed][-1] == "hr app" and len(listed) == 3
    assert new_key not in str(listed)
    assert client.get("/v1/keys", headers=bearer(outsider)).json()["keys"][0]["id"] != info["id"]
    assert client.delete(f"/v1/keys/{info['id']}", headers=bearer(outsider)).status_code == 404

    assert client.delete(f"/v1/keys/{info['id']}", headers=bearer(admin)).status_code == 204
    assert client.get("/v1/collections", headers=bearer(new_key)).status_code == 401
    again = client.delete(f"/v1/keys/{info['id']}", headers=bearer(admin))
    assert again.status_code == 404 and again.json()["error"]["type"] == "not_found"
    assert [k["revoked"] for k in client.get("/v1/keys", headers=bearer(admin)).json()["keys"]
            if k["id"] == info["id"]] == [True]
    bad = client.post("/v1/keys", headers=bearer(admin), json={"groups": [""]})
    assert bad.status_code == 422
