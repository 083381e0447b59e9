-- BM25 postings as one row per chunk instead of one row per (chunk, term).
-- chunk_terms held about 100 rows a chunk, each with its own tuple header, copy of the
-- chunk id, primary-key entry, lookup-index entry and foreign-key check: 17 kB a chunk with
-- its indexes, and 60% of the time spent writing a chunk. Here a chunk's terms and their
-- frequencies are two parallel arrays (terms sorted), found by a GIN index on the terms:
-- one tuple, one key and one foreign-key check a chunk, and GIN's pending list batches
-- the term entries. Scores are unchanged: the same tf, df, N and average length.
CREATE TABLE chunk_postings (
    chunk_id      text PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,
    collection_id bigint NOT NULL,
    terms         text[] NOT NULL,
    tfs           int4[] NOT NULL,
    CHECK (cardinality(terms) = cardinality(tfs))
);

INSERT INTO chunk_postings (chunk_id, collection_id, terms, tfs)
SELECT chunk_id, min(collection_id), array_agg(term ORDER BY term), array_agg(tf ORDER BY term)
FROM chunk_terms GROUP BY chunk_id;

DROP TABLE chunk_terms;

CREATE INDEX chunk_postings_terms_idx ON chunk_postings USING gin (terms);
