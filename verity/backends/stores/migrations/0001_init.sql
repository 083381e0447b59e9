-- Collections, documents and chunks with float (halfvec) and binary embeddings.
-- Vector columns carry no fixed dimension: each collection records its model and
-- dimension, and its HNSW index is a partial expression index cast to that size.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE collections (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL DEFAULT 'default',
    name        text NOT NULL,
    embed_model text NOT NULL,
    embed_dim   integer NOT NULL CHECK (embed_dim > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, name)
);

CREATE TABLE documents (
    id            text PRIMARY KEY,
    collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    source        text NOT NULL,
    title         text NOT NULL DEFAULT '',
    content_hash  text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    acl_groups    text[] NOT NULL DEFAULT '{}',
    chunk_count   integer NOT NULL DEFAULT 0,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection_id, source)
);

CREATE TABLE chunks (
    id            text PRIMARY KEY,
    document_id   text NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    ordinal       integer NOT NULL,
    text          text NOT NULL,
    heading       text NOT NULL DEFAULT '',
    page          integer,
    token_count   integer NOT NULL DEFAULT 0,
    embedding     halfvec NOT NULL,
    embedding_bin bit varying NOT NULL,
    UNIQUE (document_id, ordinal)
);

CREATE INDEX chunks_collection_idx ON chunks (collection_id);
