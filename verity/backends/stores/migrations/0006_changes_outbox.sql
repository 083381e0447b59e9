-- The outbox derived indexes (the tantivy lexical index) follow: one row per document
-- written, re-written (its chunks, ACL or metadata changed) or deleted, inserted by a
-- trigger in the same transaction as the change itself, so no write path can forget it and
-- a rolled-back write leaves no row. Deleting a collection cascades to its documents and
-- so records each of them.
--
-- Readers do not trust the id order: a bigserial id is taken before commit, so a lower id
-- can become visible after a higher one. Each row records its transaction id instead;
-- every transaction older than pg_snapshot_xmin(pg_current_snapshot()) has finished, so
-- a reader that has applied every row with xid below that horizon has missed nothing, and
-- next applies the rows from that horizon up to the next one.
CREATE TABLE changes (
    id            bigserial PRIMARY KEY,
    xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    collection_id bigint NOT NULL,
    document_id   text NOT NULL,
    op            text NOT NULL CHECK (op IN ('upsert', 'delete')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX changes_collection_xid_idx ON changes (collection_id, xid);

CREATE FUNCTION record_document_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO changes (collection_id, document_id, op)
        VALUES (OLD.collection_id, OLD.id, 'delete');
        RETURN OLD;
    END IF;
    INSERT INTO changes (collection_id, document_id, op)
    VALUES (NEW.collection_id, NEW.id, 'upsert');
    RETURN NEW;
END
$$;

CREATE TRIGGER documents_changes AFTER INSERT OR UPDATE OR DELETE ON documents
    FOR EACH ROW EXECUTE FUNCTION record_document_change();

-- Changes older than a retention period are pruned; the largest transaction id pruned is
-- kept here, so an index whose horizon is not above it (a replica that was away longer
-- than the retention) knows it may have missed changes and rebuilds.
CREATE TABLE changes_pruned (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    upto      xid8 NOT NULL
);
INSERT INTO changes_pruned (upto) VALUES ('0');
