"""The original files of documents (the ``document_files`` table): a PDF's own bytes.

They are written by :func:`write_files` in the transaction that writes the document's
row and chunks, so a file never belongs to another version than its chunks, and read
back by :class:`DocumentFiles` with the same tenant and ACL predicate as every other
read of a document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from verity.backends.stores.database import Database
from verity.backends.stores.filters import compile_filter
from verity.core.errors import NotFoundError
from verity.core.protocols import DocumentWrite
from verity.core.types import SearchFilter

UPSERT_FILE = """
INSERT INTO document_files (document_id, media_type, content, sha256, size_bytes)
VALUES (%(id)s, %(media_type)s, %(content)s, %(sha256)s, %(size)s)
ON CONFLICT (document_id) DO UPDATE SET
    media_type = EXCLUDED.media_type, content = EXCLUDED.content,
    sha256 = EXCLUDED.sha256, size_bytes = EXCLUDED.size_bytes
"""

DELETE_FILES = "DELETE FROM document_files WHERE document_id = ANY(%(ids)s::text[])"

_READ_FILE = """
SELECT d.source, f.media_type, f.content, f.sha256
FROM documents d JOIN collections c ON c.id = d.collection_id
LEFT JOIN document_files f ON f.document_id = d.id
WHERE d.id = %(id)s AND c.tenant = %(tenant)s AND {visible}
"""

NO_DOCUMENT = "no such document; list documents with GET /v1/documents"


@dataclass(frozen=True, slots=True)
class DocumentFile:
    """A kept original file: its document's source name, media type, bytes and SHA-256."""

    source: str
    media_type: str
    content: bytes
    sha256: str


def write_files(cur: psycopg.Cursor[Any], writes: Sequence[tuple[str, DocumentWrite]]) -> None:
    """Store the original file of each written document that has one, in the caller's
    transaction; a document written without one loses the file an older version kept."""
    kept = [(doc_id, w.document.original) for doc_id, w in writes if w.document.original]
    dropped = [doc_id for doc_id, w in writes if w.document.original is None]
    if dropped:
        cur.execute(DELETE_FILES, {"ids": dropped})
    if kept:
        cur.executemany(UPSERT_FILE, [{
            "id": doc_id, "media_type": f.media_type, "content": f.content,
            "sha256": f.sha256, "size": len(f.content)} for doc_id, f in kept if f])


class DocumentFiles:
    """Reads the kept files of one tenant's documents.

    Example:
        >>> DocumentFiles(db, tenant="acme").read(doc_id, where=SearchFilter(groups=("hr",)))
    """

    def __init__(self, db: Database, *, tenant: str) -> None:
        self._db = db
        self.tenant = tenant

    def read(self, doc_id: str, *, where: SearchFilter | None = None) -> DocumentFile:
        """The original file of a document of this tenant that ``where`` allows.

        Raises:
            NotFoundError: no such document, the caller may not see it, or no file of it
                is kept (the message tells the last apart, for a caller who may see it).
        """
        visible, params = compile_filter(where)
        query = sql.SQL(_READ_FILE).format(visible=visible)
        with self._db.pool.connection() as conn:
            row = conn.execute(query, {"id": doc_id, "tenant": self.tenant, **params}).fetchone()
        if row is None:
            raise NotFoundError(NO_DOCUMENT)
        source, media_type, content, digest = row
        if content is None:
            raise NotFoundError(f"no original file is kept for {source}: only PDFs are kept, "
                                "up to VERITY_CHUNKING__KEEP_FILE_MB; ingest it again to keep it")
        return DocumentFile(source=str(source), media_type=str(media_type),
                            content=bytes(content), sha256=str(digest))
