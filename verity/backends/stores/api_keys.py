"""API keys: creation, lookup and revocation. Only a hash of each key is stored.

Keys are 32 random bytes (URL-safe base64) behind a ``vk_`` prefix. They carry
enough entropy that a fast hash (SHA-256) is safe: nothing is gained by a slow
password hash for machine-generated secrets, and lookups stay one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from verity.backends.stores.database import Database
from verity.core.errors import NotFoundError

KEY_PREFIX = "vk_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: their tenant, ACL groups and whether they administer the tenant.

    ``groups=None`` means unrestricted (admin keys and ``--dev`` mode).
    """

    tenant: str
    groups: tuple[str, ...] | None
    is_admin: bool = False
    key_id: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: int
    tenant: str
    name: str
    prefix: str
    groups: tuple[str, ...]
    is_admin: bool
    created_at: datetime
    revoked: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The ``api_keys`` table.

    Example:
        >>> keys = ApiKeys(db)
        >>> key, info = keys.create(tenant="acme", groups=("hr",))
        >>> keys.authenticate(key).tenant
        'acme'
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, *, tenant: str, name: str = "", groups: tuple[str, ...] = (),
               is_admin: bool = False) -> tuple[str, ApiKeyInfo]:
        """A new key (shown once, never stored) and its record."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._db.pool.connection() as conn:
            row = conn.execute(
                "INSERT INTO api_keys (tenant, name, key_hash, key_prefix, groups, is_admin) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, created_at",
                (tenant, name, hash_key(key), key[:10], list(groups), is_admin),
            ).fetchone()
        assert row is not None
        return key, ApiKeyInfo(id=row[0], tenant=tenant, name=name, prefix=key[:10],
                               groups=groups, is_admin=is_admin, created_at=row[1], revoked=False)

    def authenticate(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key, else None."""
        if not key.startswith(KEY_PREFIX):
            return None
        with self._db.pool.connection() as conn:
            row = conn.execute(
                "SELECT id, tenant, groups, is_admin FROM api_keys "
                "WHERE key_hash = %s AND revoked_at IS NULL", (hash_key(key),),
            ).fetchone()
        if row is None:
            return None
        groups = None if row[3] else tuple(row[2])
        return Principal(tenant=row[1], groups=groups, is_admin=bool(row[3]), key_id=row[0])

    def list(self, *, tenant: str | None = None) -> list[ApiKeyInfo]:
        with self._db.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, tenant, name, key_prefix, groups, is_admin, created_at, "
                "revoked_at IS NOT NULL FROM api_keys "
                "WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s ORDER BY id",
                {"tenant": tenant},
            ).fetchall()
        return [ApiKeyInfo(id=r[0], tenant=r[1], name=r[2], prefix=r[3], groups=tuple(r[4]),
                           is_admin=r[5], created_at=r[6], revoked=r[7]) for r in rows]

    def revoke(self, key_id: int, *, tenant: str | None = None) -> None:
        """Revoke a key.

        Raises:
            NotFoundError: no such active key (in that tenant).
        """
        with self._db.pool.connection() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL "
                "AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)",
                {"id": key_id, "tenant": tenant},
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no active API key with id {key_id}")
