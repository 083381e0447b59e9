-- BM25 postings: one row per (chunk, term) with the term's frequency in the chunk.
-- Collection statistics (N, average length, document frequency) are computed at
-- query time over the chunks the caller may see, so filters and ACLs also shape
-- the scores, and every ingest updates the index within its own transaction.
ALTER TABLE chunks ADD COLUMN term_count integer NOT NULL DEFAULT 0;

CREATE TABLE chunk_terms (
    chunk_id      text NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
    collection_id bigint NOT NULL,
    term          text NOT NULL,
    tf            integer NOT NULL CHECK (tf > 0),
    PRIMARY KEY (chunk_id, term)
);

CREATE INDEX chunk_terms_lookup_idx ON chunk_terms (collection_id, term);
