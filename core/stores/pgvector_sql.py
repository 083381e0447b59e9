"""SQL for the pgvector store, as named constants.

Values are always bound parameters (``%(name)s``). The only composed parts are
integer literals (a collection's id and embedding dimension), which must be
literals for Postgres to match the partial HNSW expression index.
"""

from psycopg import sql

UPSERT_COLLECTION = """
INSERT INTO collections (tenant, name, embed_model, embed_dim)
VALUES (%(tenant)s, %(name)s, %(embed_model)s, %(embed_dim)s)
ON CONFLICT (tenant, name) DO NOTHING
"""

GET_COLLECTION = """
SELECT id, embed_model, embed_dim FROM collections WHERE tenant = %(tenant)s AND name = %(name)s
"""

GET_DOCUMENT_HASH = """
SELECT d.content_hash FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE c.tenant = %(tenant)s AND c.name = %(collection)s AND d.source = %(source)s
"""

# Locks the document row for the rest of the transaction: two writers of one
# document serialise here instead of interleaving their chunks.
UPSERT_DOCUMENT = """
INSERT INTO documents
    (id, collection_id, source, title, content_hash, metadata, acl_groups, chunk_count)
VALUES
    (%(id)s, %(collection_id)s, %(source)s, %(title)s, %(content_hash)s, %(metadata)s,
     %(acl_groups)s, %(chunk_count)s)
ON CONFLICT (id) DO UPDATE SET
    title = EXCLUDED.title,
    content_hash = EXCLUDED.content_hash,
    metadata = EXCLUDED.metadata,
    acl_groups = EXCLUDED.acl_groups,
    chunk_count = EXCLUDED.chunk_count,
    ingested_at = now()
"""

DELETE_CHUNKS_OF_DOCUMENT = "DELETE FROM chunks WHERE document_id = %(id)s"

COPY_CHUNKS = """
COPY chunks (id, document_id, collection_id, ordinal, text, heading, page, token_count,
             term_count, embedding, embedding_bin)
FROM STDIN WITH (FORMAT BINARY)
"""
# ``bit`` and ``bit varying`` share one binary wire format; pgvector's adapter dumps ``bit``.
COPY_CHUNK_TYPES = [
    "text", "text", "int8", "int4", "text", "text", "int4", "int4", "int4", "halfvec", "bit",
]

COPY_TERMS = """
COPY chunk_terms (chunk_id, collection_id, term, tf) FROM STDIN WITH (FORMAT BINARY)
"""
COPY_TERM_TYPES = ["text", "int8", "text", "int4"]

DELETE_DOCUMENT = """
DELETE FROM documents d USING collections c
WHERE c.id = d.collection_id AND c.tenant = %(tenant)s AND c.name = %(collection)s
  AND d.source = %(source)s
"""

LIST_SOURCES = """
SELECT d.source FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE c.tenant = %(tenant)s AND c.name = %(collection)s ORDER BY d.source
"""

STATS = """
SELECT c.name, c.embed_model, c.embed_dim,
       (SELECT count(*) FROM documents d WHERE d.collection_id = c.id) AS documents,
       (SELECT count(*) FROM chunks k WHERE k.collection_id = c.id) AS chunks
FROM collections c WHERE c.tenant = %(tenant)s ORDER BY c.name
"""

_HIT_COLUMNS = """
k.id, k.document_id, k.ordinal, k.text, k.heading, k.page, k.token_count, d.source, d.title
"""

SEARCH_FLOAT = f"""
SELECT {_HIT_COLUMNS}, 1 - (k.embedding <=> %(query)s) AS score
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = %(collection_id)s
ORDER BY k.embedding <=> %(query)s
LIMIT %(top_k)s
"""

# A deterministic pseudo-random sample of a collection's chunks: the order is a hash of
# the chunk id and a seed, so the same seed gives the same sample. Score is always 0.
SAMPLE_CHUNKS = f"""
SELECT {_HIT_COLUMNS}, 0.0::float8 AS score
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = %(collection_id)s
ORDER BY md5(k.id || %(seed)s), k.id
LIMIT %(limit)s
"""

# Hamming distance over the binary codes picks ``candidates`` rows through the
# collection's HNSW index; the float (halfvec) vectors then rescore them.
_SEARCH_BINARY_RESCORE = """
WITH candidates AS (
    SELECT id FROM chunks
    WHERE collection_id = {collection_id}
    ORDER BY embedding_bin::bit({dim}) <~> %(query_bits)s
    LIMIT %(candidates)s
)
SELECT {columns}, 1 - (k.embedding <=> %(query)s) AS score
FROM candidates JOIN chunks k USING (id) JOIN documents d ON d.id = k.document_id
ORDER BY k.embedding <=> %(query)s
LIMIT %(top_k)s
"""

# Okapi BM25 (Robertson & Zaragoza 2009) with Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5)).
# N, the average chunk length and each term's df are taken over the collection's chunks.
# ``stats`` and ``df`` are MATERIALIZED: inlined, the planner (misestimating the postings
# join as one row) re-ran the collection-wide aggregate once per matching posting, which
# took 30 s per query on SciFact's 11k chunks instead of milliseconds.
SEARCH_BM25 = f"""
WITH stats AS MATERIALIZED (
    SELECT count(*)::float8 AS n, greatest(avg(term_count), 1)::float8 AS avgdl
    FROM chunks WHERE collection_id = %(collection_id)s
),
query AS (
    SELECT * FROM unnest(%(terms)s::text[], %(weights)s::float8[]) AS q(term, qtf)
),
df AS MATERIALIZED (
    SELECT term, count(*)::float8 AS df FROM chunk_terms
    WHERE collection_id = %(collection_id)s AND term = ANY(%(terms)s::text[])
    GROUP BY term
),
scored AS (
    SELECT t.chunk_id,
           sum(query.qtf * ln(1 + (stats.n - df.df + 0.5) / (df.df + 0.5))
               * t.tf * (%(k1)s + 1)
               / (t.tf + %(k1)s * (1 - %(b)s + %(b)s * c.term_count / stats.avgdl))) AS score
    FROM chunk_terms t
    JOIN query USING (term)
    JOIN df USING (term)
    JOIN chunks c ON c.id = t.chunk_id
    CROSS JOIN stats
    WHERE t.collection_id = %(collection_id)s AND t.term = ANY(%(terms)s::text[])
    GROUP BY t.chunk_id
    ORDER BY score DESC, t.chunk_id
    LIMIT %(top_k)s
)
SELECT {_HIT_COLUMNS}, scored.score
FROM scored JOIN chunks k ON k.id = scored.chunk_id JOIN documents d ON d.id = k.document_id
ORDER BY scored.score DESC, k.id
"""

_CREATE_BINARY_INDEX = """
CREATE INDEX IF NOT EXISTS {name} ON chunks
USING hnsw ((embedding_bin::bit({dim})) bit_hamming_ops)
WHERE collection_id = {collection_id}
"""


def search_binary_rescore(*, collection_id: int, dim: int) -> sql.Composed:
    return sql.SQL(_SEARCH_BINARY_RESCORE).format(
        collection_id=sql.Literal(collection_id),
        dim=sql.Literal(dim),
        columns=sql.SQL(_HIT_COLUMNS),
    )


def create_binary_index(*, collection_id: int, dim: int) -> sql.Composed:
    return sql.SQL(_CREATE_BINARY_INDEX).format(
        name=sql.Identifier(f"chunks_bin_hnsw_{collection_id}"),
        dim=sql.Literal(dim),
        collection_id=sql.Literal(collection_id),
    )


def set_ef_search(ef: int) -> sql.Composed:
    """HNSW search breadth for the rest of the transaction (must reach the candidate count)."""
    return sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(int(ef)))
