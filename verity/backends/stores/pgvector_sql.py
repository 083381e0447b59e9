"""SQL for the pgvector store, as named constants.

Values are always bound parameters (``%(name)s``). The only composed parts are
integer literals (a collection's id and embedding dimension), which must be
literals for Postgres to match the partial HNSW expression index.
"""

from psycopg import sql

UPSERT_COLLECTION = """
INSERT INTO collections (tenant, name, embed_model, embed_dim, embed_backend, embed_precision)
VALUES (%(tenant)s, %(name)s, %(embed_model)s, %(embed_dim)s, %(embed_backend)s,
        %(embed_precision)s)
ON CONFLICT (tenant, name) DO NOTHING
"""

GET_COLLECTION = """
SELECT id, embed_model, embed_dim FROM collections WHERE tenant = %(tenant)s AND name = %(name)s
"""

# What made the collection's vectors, and what a re-embed in progress is moving them to.
GET_COLLECTION_VECTORS = """
SELECT id, embed_model, embed_dim, embed_backend, embed_precision, reembed_backend,
       reembed_precision, reembed_after
FROM collections WHERE tenant = %(tenant)s AND name = %(name)s
"""

# The latest writer's: re-ingesting with a compatible embedder re-embeds every document.
# Not while a re-embed runs: the chunks it has not reached keep the recorded embedder's.
SET_COLLECTION_VECTORS = """
UPDATE collections SET embed_backend = %(embed_backend)s, embed_precision = %(embed_precision)s
WHERE id = %(id)s AND reembed_precision IS NULL
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

DELETE_CHUNKS_OF_DOCUMENTS = "DELETE FROM chunks WHERE document_id = ANY(%(ids)s::text[])"

COPY_CHUNKS = """
COPY chunks (id, document_id, collection_id, ordinal, text, heading, page, token_count,
             term_count, embedding, embedding_bin)
FROM STDIN WITH (FORMAT BINARY)
"""
# ``bit`` and ``bit varying`` share one binary wire format; pgvector's adapter dumps ``bit``.
COPY_CHUNK_TYPES = [
    "text", "text", "int8", "int4", "text", "text", "int4", "int4", "int4", "halfvec", "bit",
]

COPY_POSTINGS = """
COPY chunk_postings (chunk_id, collection_id, terms, tfs) FROM STDIN WITH (FORMAT BINARY)
"""
COPY_POSTING_TYPES = ["text", "int8", "text[]", "int4[]"]

DELETE_DOCUMENT = """
DELETE FROM documents d USING collections c
WHERE c.id = d.collection_id AND c.tenant = %(tenant)s AND c.name = %(collection)s
  AND d.source = %(source)s
"""

LIST_DOCUMENT_HASHES = """
SELECT d.source, d.content_hash FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE c.tenant = %(tenant)s AND c.name = %(collection)s
"""

LIST_SOURCES = """
SELECT d.source FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE c.tenant = %(tenant)s AND c.name = %(collection)s ORDER BY d.source
"""

# Collections with the documents and chunks the caller may see ({visible} on ``d``).
_STATS = """
SELECT c.name, c.embed_model, c.embed_dim,
       (SELECT count(*) FROM documents d WHERE d.collection_id = c.id AND {visible}) AS documents,
       (SELECT count(*) FROM chunks k JOIN documents d ON d.id = k.document_id
        WHERE k.collection_id = c.id AND {visible}) AS chunks,
       c.embed_backend, c.embed_precision, c.reembed_precision
FROM collections c WHERE c.tenant = %(tenant)s ORDER BY c.name
"""

CREATE_COLLECTION = """
INSERT INTO collections (tenant, name, embed_model, embed_dim, embed_backend, embed_precision)
VALUES (%(tenant)s, %(name)s, %(embed_model)s, %(embed_dim)s, %(embed_backend)s,
        %(embed_precision)s)
ON CONFLICT (tenant, name) DO NOTHING
RETURNING id
"""

# Documents, chunks and postings go with it (ON DELETE CASCADE).
DELETE_COLLECTION = """
DELETE FROM collections WHERE tenant = %(tenant)s AND name = %(name)s RETURNING id
"""

_DOCUMENT_COLUMNS = """
d.id, c.name, d.source, d.title, d.chunk_count, d.acl_groups, d.metadata, d.ingested_at
"""

_LIST_DOCUMENTS = """
SELECT {columns} FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE d.collection_id = %(collection_id)s AND {visible}
ORDER BY d.source
LIMIT %(limit)s OFFSET %(offset)s
"""

_COUNT_DOCUMENTS = """
SELECT count(*) FROM documents d WHERE d.collection_id = %(collection_id)s AND {visible}
"""

_GET_DOCUMENT = """
SELECT {columns} FROM documents d JOIN collections c ON c.id = d.collection_id
WHERE d.id = %(id)s AND c.tenant = %(tenant)s AND {visible}
"""

DELETE_DOCUMENT_BY_ID = """
DELETE FROM documents d USING collections c
WHERE c.id = d.collection_id AND c.tenant = %(tenant)s AND d.id = %(id)s
"""


def stats(*, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_STATS).format(visible=visible)


def list_documents(*, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_LIST_DOCUMENTS).format(columns=sql.SQL(_DOCUMENT_COLUMNS), visible=visible)


def count_documents(*, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_COUNT_DOCUMENTS).format(visible=visible)


def get_document(*, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_GET_DOCUMENT).format(columns=sql.SQL(_DOCUMENT_COLUMNS), visible=visible)


CHUNK_DOCUMENT = "SELECT document_id FROM chunks WHERE id = %(id)s"

# One page of a document's chunks, in reading order.
DOCUMENT_CHUNKS = """
SELECT id, document_id, ordinal, text, heading, page, token_count FROM chunks
WHERE document_id = %(id)s ORDER BY ordinal LIMIT %(limit)s OFFSET %(offset)s
"""

# A chunk and its neighbours in the document, in reading order.
CHUNK_CONTEXT = """
SELECT n.id, n.document_id, n.ordinal, n.text, n.heading, n.page, n.token_count
FROM chunks k
JOIN chunks n ON n.document_id = k.document_id
             AND n.ordinal BETWEEN k.ordinal - %(window)s AND k.ordinal + %(window)s
WHERE k.id = %(id)s
ORDER BY n.ordinal
"""



# --- The FAISS accelerator (verity/backends/stores/faiss_index.py) reads the same tables. ---

# One snapshot for the manifest and the streamed rows, so they describe the same chunks.
SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

# What a FAISS index must match: the number of chunks and an order-independent checksum
# of their ids with their document's content hash. Re-ingesting a changed document keeps
# its chunk ids (they are derived from the source) but changes the hash, so it shows here.
# A re-embed changes vectors without changing ids or hashes: the collection's
# vectors_generation, part of the checksum, changes with it.
FAISS_MANIFEST = """
SELECT count(*),
       coalesce(sum(hashtextextended(k.id || ':' || d.content_hash, 0)), 0)::text
       || ':' || (SELECT vectors_generation FROM collections WHERE id = %(collection_id)s)
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = %(collection_id)s
"""

# Read through a server-side cursor, a batch at a time.
STREAM_EMBEDDINGS = """
SELECT id, embedding FROM chunks WHERE collection_id = %(collection_id)s
"""

FETCH_EMBEDDINGS = """
SELECT id, embedding FROM chunks WHERE collection_id = %(collection_id)s AND id = ANY(%(ids)s)
"""

_HIT_COLUMNS = """
k.id, k.document_id, k.ordinal, k.text, k.heading, k.page, k.token_count, d.source, d.title
"""

# Every search template takes ``{visible}``: the caller's filter as a predicate on the
# documents row ``d`` (see verity/backends/stores/filters.py). It is applied inside the query.
_SEARCH_FLOAT = """
SELECT {columns}, 1 - (k.embedding <=> %(query)s) AS score
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = %(collection_id)s AND {visible}
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
    SELECT k.id FROM chunks k JOIN documents d ON d.id = k.document_id
    WHERE k.collection_id = {collection_id} AND {visible}
    ORDER BY k.embedding_bin::bit({dim}) <~> %(query_bits)s
    LIMIT %(candidates)s
)
SELECT {columns}, 1 - (k.embedding <=> %(query)s) AS score
FROM candidates JOIN chunks k USING (id) JOIN documents d ON d.id = k.document_id
ORDER BY k.embedding <=> %(query)s
LIMIT %(top_k)s
"""

# The planner's estimate of the chunks a filter leaves visible (EXPLAIN plans without
# running): a fraction of a millisecond, where counting them costs a scan of up to as
# many rows. ANALYZE's statistics on documents.acl_groups (most common elements) and
# metadata make it close for ACL filters.
_ESTIMATE_VISIBLE_CHUNKS = """
EXPLAIN (FORMAT JSON)
SELECT 1 FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = %(collection_id)s AND {visible}
"""

# Exact search for a selective filter: the visible documents first (through the GIN index
# on acl_groups), then their chunks through the (document_id, ordinal) index, so the cost
# follows the visible chunks rather than the collection.
_SEARCH_FLOAT_VISIBLE_FIRST = """
WITH d AS MATERIALIZED (
    SELECT d.id, d.source, d.title FROM documents d
    WHERE d.collection_id = %(collection_id)s AND {visible}
)
SELECT {columns}, 1 - (k.embedding <=> %(query)s) AS score
FROM d JOIN chunks k ON k.document_id = d.id
ORDER BY k.embedding <=> %(query)s
LIMIT %(top_k)s
"""

# Hamming distance alone, no rescoring: the binary index's own ranking. The score is the
# cosine the distance implies for random-hyperplane sign bits (Charikar 2002):
# cos(pi * hamming / dim), 1 for identical codes and -1 for opposite ones.
_SEARCH_BINARY = """
SELECT {columns}, cos(pi() * (k.embedding_bin::bit({dim}) <~> %(query_bits)s) / {dim}) AS score
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = {collection_id} AND {visible}
ORDER BY k.embedding_bin::bit({dim}) <~> %(query_bits)s
LIMIT %(top_k)s
"""

# Okapi BM25 (Robertson & Zaragoza 2009) with Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5)).
# N, the average chunk length and each term's df are taken over the chunks the caller may see.
# A chunk's postings are one row (terms and their frequencies in parallel arrays, migration
# 0010); the GIN index on the terms finds the chunks holding any query term.
# The CTEs are MATERIALIZED: inlined, the planner (misestimating the postings join as one
# row) re-ran the collection-wide aggregate per matching posting: 30 s a query on SciFact.
_SEARCH_BM25 = """
WITH visible AS MATERIALIZED (
    SELECT k.id, k.term_count FROM chunks k JOIN documents d ON d.id = k.document_id
    WHERE k.collection_id = %(collection_id)s AND {visible}
),
stats AS MATERIALIZED (
    SELECT count(*)::float8 AS n, greatest(avg(term_count), 1)::float8 AS avgdl FROM visible
),
query AS (
    SELECT * FROM unnest(%(terms)s::text[], %(weights)s::float8[]) AS q(term, qtf)
),
postings AS MATERIALIZED (
    SELECT chunk_id, term, tf, term_count FROM (
        SELECT p.chunk_id, query.term, p.tfs[array_position(p.terms, query.term)] AS tf,
               v.term_count
        FROM chunk_postings p JOIN visible v ON v.id = p.chunk_id CROSS JOIN query
        WHERE p.collection_id = %(collection_id)s AND p.terms && %(terms)s::text[]
    ) matched
    WHERE tf IS NOT NULL
),
df AS MATERIALIZED (
    SELECT term, count(*)::float8 AS df FROM postings GROUP BY term
),
scored AS (
    SELECT p.chunk_id,
           sum(query.qtf * ln(1 + (stats.n - df.df + 0.5) / (df.df + 0.5))
               * p.tf * (%(k1)s + 1)
               / (p.tf + %(k1)s * (1 - %(b)s + %(b)s * p.term_count / stats.avgdl))) AS score
    FROM postings p JOIN query USING (term) JOIN df USING (term) CROSS JOIN stats
    GROUP BY p.chunk_id
    ORDER BY score DESC, p.chunk_id
    LIMIT %(top_k)s
)
SELECT {columns}, scored.score
FROM scored JOIN chunks k ON k.id = scored.chunk_id JOIN documents d ON d.id = k.document_id
ORDER BY scored.score DESC, k.id
"""


def search_float(*, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_SEARCH_FLOAT).format(columns=sql.SQL(_HIT_COLUMNS), visible=visible)


def search_bm25(*, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_SEARCH_BM25).format(columns=sql.SQL(_HIT_COLUMNS), visible=visible)


def search_binary_rescore(*, collection_id: int, dim: int, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_SEARCH_BINARY_RESCORE).format(
        collection_id=sql.Literal(collection_id),
        dim=sql.Literal(dim),
        columns=sql.SQL(_HIT_COLUMNS),
        visible=visible,
    )


def estimate_visible_chunks(*, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_ESTIMATE_VISIBLE_CHUNKS).format(visible=visible)


def search_float_visible_first(*, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_SEARCH_FLOAT_VISIBLE_FIRST).format(columns=sql.SQL(_HIT_COLUMNS),
                                                       visible=visible)


def search_binary(*, collection_id: int, dim: int, visible: sql.Composable) -> sql.Composed:
    return sql.SQL(_SEARCH_BINARY).format(
        collection_id=sql.Literal(collection_id),
        dim=sql.Literal(dim),
        columns=sql.SQL(_HIT_COLUMNS),
        visible=visible,
    )


# Chunks by id, for hits found outside Postgres (the FAISS accelerator returns ids).
FETCH_HITS = f"""
SELECT {_HIT_COLUMNS}, 0.0::float8 AS score
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = %(collection_id)s AND k.id = ANY(%(ids)s)
"""


def fetch_visible_hits(*, visible: sql.Composable) -> sql.Composed:
    """FETCH_HITS keeping only the chunks the caller's filter allows."""
    return sql.SQL(FETCH_HITS + " AND {visible}").format(visible=visible)

# What a collection's search structures take, in bytes. Tables are shared by all
# collections, so the float vectors, bit codes and BM25 postings are summed over the
# collection's rows (pg_column_size: the stored, possibly compressed, size); the
# postings' lookup index is prorated by the collection's share of the postings; the
# binary HNSW index is the collection's own partial index.
INDEX_BYTES = """
WITH k AS (
    SELECT coalesce(sum(pg_column_size(embedding)), 0)::int8 AS halfvec,
           coalesce(sum(pg_column_size(embedding_bin)), 0)::int8 AS bits,
           count(*) AS chunks
    FROM chunks WHERE collection_id = %(collection_id)s
), t AS (
    SELECT coalesce(sum(pg_column_size(t.*)), 0)::int8 AS postings, count(*) AS rows
    FROM chunk_postings t WHERE collection_id = %(collection_id)s
)
SELECT k.halfvec, k.bits, k.chunks, t.postings,
       (pg_relation_size('chunk_postings_terms_idx'::regclass)
        * t.rows / greatest((SELECT reltuples FROM pg_class
                             WHERE oid = 'chunk_postings'::regclass), t.rows, 1))::int8,
       coalesce(pg_relation_size(to_regclass(%(binary_index)s)), 0)::int8
FROM k, t
"""


# Small-to-big: each hit's text widened with its neighbours in the same document.
WIDEN = """
SELECT k.id, string_agg(n.text, E'\\n' ORDER BY n.ordinal)
FROM unnest(%(ids)s::text[]) AS h(id)
JOIN chunks k ON k.id = h.id
JOIN chunks n ON n.document_id = k.document_id
             AND n.ordinal BETWEEN k.ordinal - %(window)s AND k.ordinal + %(window)s
GROUP BY k.id
"""

_CREATE_BINARY_INDEX = """
CREATE INDEX IF NOT EXISTS {name} ON chunks
USING hnsw ((embedding_bin::bit({dim})) bit_hamming_ops)
WHERE collection_id = {collection_id}
"""


COLLECTION_IS_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM chunks WHERE collection_id = %(collection_id)s)"

# HNSW builds fastest when the graph fits in maintenance_work_mem (about 350 B a chunk).
SET_INDEX_BUILD_MEMORY = "SET maintenance_work_mem = '1GB'"


def create_binary_index(*, collection_id: int, dim: int) -> sql.Composed:
    return sql.SQL(_CREATE_BINARY_INDEX).format(
        name=sql.Identifier(binary_index_name(collection_id)),
        dim=sql.Literal(dim),
        collection_id=sql.Literal(collection_id),
    )


def drop_binary_index(*, collection_id: int) -> sql.Composed:
    """The partial HNSW index of a deleted collection would otherwise stay behind."""
    return sql.SQL("DROP INDEX IF EXISTS {}").format(
        sql.Identifier(binary_index_name(collection_id)))


def reindex_binary_index(*, collection_id: int) -> sql.Composed:
    """Rebuild the collection's HNSW graph from its rows, without blocking reads or writes."""
    return sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(
        sql.Identifier(binary_index_name(collection_id)))


COUNT_COLLECTION_CHUNKS = "SELECT count(*) FROM chunks WHERE collection_id = %(collection_id)s"


def binary_index_name(collection_id: int) -> str:
    return f"chunks_bin_hnsw_{collection_id}"


MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
# binary-rescore walks the graph at least this wide, even for fewer candidates: HNSW builds
# of one collection vary (recall@10 0.957 to 0.997 at 100k chunks, x10, ef_search 100, in
# six builds); 200 lifted the worst build to 0.990 at no measurable cost.
MIN_EF_SEARCH_RESCORE = 200
# An iterative scan visits up to this many index tuples per candidate wanted (and never
# fewer than pgvector's default 20000), so a filter that keeps one chunk in 400 still
# fills the candidate list, and a filter that keeps almost nothing stops the walk.
SCAN_TUPLES_PER_CANDIDATE = 400
MIN_SCAN_TUPLES = 20_000


def set_ef_search(ef: int) -> sql.Composed:
    """HNSW search settings for the rest of the transaction (``ef`` must reach the candidates).

    With a filter, pgvector's iterative scan keeps walking the graph until enough
    visible rows are found instead of returning fewer; ``hnsw.max_scan_tuples``
    bounds that walk in proportion to the candidates wanted. ``SET LOCAL`` only
    holds inside a transaction: run this and the search in the same one.
    """
    ef = min(int(ef), MAX_EF_SEARCH)
    return sql.SQL(
        "SET LOCAL hnsw.ef_search = {}; SET LOCAL hnsw.iterative_scan = relaxed_order; "
        "SET LOCAL hnsw.max_scan_tuples = {}"
    ).format(sql.Literal(ef), sql.Literal(max(ef * SCAN_TUPLES_PER_CANDIDATE, MIN_SCAN_TUPLES)))


# --- Re-embedding a collection in place (verity/backends/stores/reembed.py). ---

LOCK_COLLECTION_VECTORS = GET_COLLECTION_VECTORS.rstrip() + " FOR UPDATE\n"
# Writers of chunks hold this until they commit: a re-embed starts (FOR UPDATE) only once
# they have, and a writer that locks after it sees the re-embed.
SHARE_COLLECTION_VECTORS = GET_COLLECTION_VECTORS.rstrip() + " FOR SHARE\n"

START_REEMBED = """
UPDATE collections SET embed_backend = %(backend)s, embed_precision = %(precision)s,
       reembed_backend = %(target_backend)s, reembed_precision = %(target_precision)s,
       reembed_after = %(after)s
WHERE id = %(id)s
"""

# Chunks not yet re-embedded, in id order, with what their embedding text is made of.
REEMBED_BATCH = """
SELECT k.id, k.text, k.heading, d.title, d.content_hash
FROM chunks k JOIN documents d ON d.id = k.document_id
WHERE k.collection_id = %(collection_id)s AND (%(after)s::text IS NULL OR k.id > %(after)s)
ORDER BY k.id LIMIT %(limit)s
"""

COUNT_CHUNKS_UPTO = """
SELECT count(*) FROM chunks
WHERE collection_id = %(collection_id)s AND %(after)s::text IS NOT NULL AND id <= %(after)s
"""

# Moves the cursor, only while this target is still the one being re-embedded to; it also
# locks the collection's row, so a re-embed that changes the target waits for the batch.
ADVANCE_REEMBED = """
UPDATE collections SET reembed_after = %(after)s
WHERE id = %(collection_id)s AND reembed_backend = %(backend)s
  AND reembed_precision = %(precision)s
RETURNING id
"""

# A chunk whose document was re-written since the batch was read keeps its new vector.
SET_CHUNK_VECTOR = """
UPDATE chunks k SET embedding = %(embedding)s, embedding_bin = %(bits)s
WHERE k.id = %(id)s AND EXISTS (
    SELECT 1 FROM documents d WHERE d.id = k.document_id AND d.content_hash = %(content_hash)s)
"""

# Re-embedded chunks' documents, recorded in the outbox in the same transaction, so the
# in-memory dense indexes take the new vectors (their documents' rows are not written).
RECORD_REEMBEDDED = """
INSERT INTO changes (collection_id, document_id, op)
SELECT DISTINCT collection_id, document_id, 'upsert' FROM chunks WHERE id = ANY(%(ids)s)
"""

FINISH_REEMBED = """
UPDATE collections SET embed_backend = reembed_backend, embed_precision = reembed_precision,
       reembed_backend = NULL, reembed_precision = NULL, reembed_after = NULL,
       vectors_generation = vectors_generation + 1
WHERE id = %(collection_id)s AND reembed_backend = %(backend)s
  AND reembed_precision = %(precision)s
RETURNING id
"""
