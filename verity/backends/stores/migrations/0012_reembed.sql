-- Re-embedding a collection in place: every chunk's vector is computed again with another
-- embedder backend or precision, a batch at a time, while the collection stays searchable.
--
-- While one runs, collections.reembed_backend/reembed_precision name the embedder the
-- chunks are being moved to, and embed_backend/embed_precision keep naming the one the
-- chunks not yet re-embedded were made with: the collection then holds vectors of both,
-- and a query embedder must be compatible with both. reembed_after is the id of the last
-- chunk re-embedded (chunks go in id order), written in the batch's own transaction, so a
-- re-embed that was stopped resumes after it. When the last batch is written the target
-- becomes the collection's embedder and vectors_generation goes up by one; derived indexes
-- that hold vectors (the FAISS accelerator) compare it to know theirs are stale.
ALTER TABLE collections
    ADD COLUMN reembed_backend text,
    ADD COLUMN reembed_precision text,
    ADD COLUMN reembed_after text,
    ADD COLUMN vectors_generation integer NOT NULL DEFAULT 0;

-- A job either ingests uploaded files or re-embeds a collection; a re-embed reports its
-- progress in chunks (chunks_written of chunks_total).
ALTER TABLE jobs
    ADD COLUMN kind text NOT NULL DEFAULT 'ingest' CHECK (kind IN ('ingest', 'reembed')),
    ADD COLUMN chunks_total integer NOT NULL DEFAULT 0;
