-- API keys: only a SHA-256 hash of each key is stored. A key belongs to one tenant,
-- carries the ACL groups its caller belongs to, and may be an admin key.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    name        text NOT NULL DEFAULT '',
    key_hash    text NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    groups      text[] NOT NULL DEFAULT '{}',
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
