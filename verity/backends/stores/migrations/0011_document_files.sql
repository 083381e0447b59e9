-- The original bytes of a document whose file a reader may want to see as it is (a PDF,
-- rendered page by page in the web page). Written in the same transaction as the document
-- row and its chunks, so the file and the chunks always come from the same version; a
-- re-ingest replaces it, and deleting the document (or its collection) deletes it.
CREATE TABLE document_files (
    document_id text PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    media_type  text NOT NULL,
    content     bytea NOT NULL,
    sha256      text NOT NULL,
    size_bytes  bigint NOT NULL
);
-- Out-of-line storage without compression: PDFs are compressed already.
ALTER TABLE document_files ALTER COLUMN content SET STORAGE EXTERNAL;
