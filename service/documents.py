"""Documents and ingestion jobs for the routes: uploads are queued, never ingested here.

The service only writes the upload into the job queue (``verity.backends.stores.jobs``); a
worker from the ``ingest`` package runs it. Every lookup is scoped to the
caller's tenant, and listing applies the caller's ACL groups in the query.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

from fastapi.exceptions import RequestValidationError

from service.metrics import Metrics
from service.protocol import (
    ChunkContext,
    ChunkList,
    DocumentList,
    DocumentModel,
    JobList,
    JobResponse,
    ReembedAccepted,
    ReindexResponse,
    UploadAccepted,
    unstorable,
)
from verity.answering.runtime import Runtime
from verity.backends.embedders import LocalEmbedder
from verity.backends.stores.api_keys import Principal
from verity.backends.stores.document_files import DocumentFile, DocumentFiles
from verity.backends.stores.jobs import JobQueue
from verity.backends.stores.reembed import Embedding, check_reembed, reindex_collection
from verity.core.errors import ConfigError, ForbiddenError, NotFoundError
from verity.core.protocols import Store
from verity.core.types import SearchFilter, UploadedFile

MAX_GROUPS = 50
MAX_NAME_CHARS = 255


class Upload(Protocol):
    """What is needed of an uploaded file (Starlette's ``UploadFile`` has it)."""

    filename: str | None
    file: BinaryIO


def invalid(field: str, message: str) -> RequestValidationError:
    """A 422 for one form field, in the same shape as FastAPI's own validation errors."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def parse_groups(raw: str | None) -> tuple[str, ...]:
    """Comma-separated ACL groups; blanks are dropped.

    Raises:
        RequestValidationError: too many groups or one over 100 characters (422).
    """
    groups = tuple(dict.fromkeys(g.strip() for g in (raw or "").split(",") if g.strip()))
    if len(groups) > MAX_GROUPS or any(len(g) > 100 for g in groups):
        raise invalid("groups", f"at most {MAX_GROUPS} groups of 1-100 characters")
    return groups


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """A JSON object of metadata given to every uploaded document.

    Raises:
        RequestValidationError: not a JSON object (or null), a key not 1-100 characters, or
            a value PostgreSQL cannot store: NUL characters, NaN or infinities (422).
    """
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise invalid("metadata", "must be a JSON object, e.g. {\"dept\": \"hr\"}") from None
    if value is None:  # JSON's null: no metadata, as when the field is left out
        return {}
    if not isinstance(value, dict):
        raise invalid("metadata", "must be a JSON object, e.g. {\"dept\": \"hr\"}")
    if any(not key or len(key) > 100 for key in value):
        raise invalid("metadata", "keys are 1-100 characters")
    problem = unstorable(value)
    if problem:
        raise invalid("metadata", f"cannot hold {problem}")
    return value


def read_uploads(files: Sequence[Upload]) -> list[UploadedFile]:
    """The uploaded files, each named by its base name (a path sent by the client is dropped).

    Raises:
        RequestValidationError: a file has no usable name, or two share one (422).
    """
    out: list[UploadedFile] = []
    for upload in files:
        name = PurePosixPath((upload.filename or "").replace("\\", "/")).name.strip()
        if not name or name in (".", "..") or len(name) > MAX_NAME_CHARS:
            raise invalid("files", "every file needs a name of 1-255 characters")
        if any(f.name == name for f in out):
            raise invalid("files", f"two files are named {name!r}; names must be unique")
        out.append(UploadedFile(name=name, data=upload.file.read()))
    return out


def enqueue_upload(runtime: Runtime, principal: Principal, *, collection: str,
                   files: list[UploadedFile], groups: tuple[str, ...], metadata: dict[str, Any],
                   metrics: Metrics | None = None) -> UploadAccepted:
    """Queue uploaded files for ingestion into one of the caller's collections.

    Raises:
        ConfigError: the collection exists but was built with another embedder (400).
    """
    _check_embedder(_store(runtime, principal), collection, runtime.embedder)
    job_id = JobQueue(runtime.db).enqueue(tenant=principal.tenant, collection=collection,
                                          files=files, groups=groups, metadata=metadata)
    if metrics is not None:
        metrics.observe_upload(files=len(files))
    return UploadAccepted(job_id=job_id)


def job_status(runtime: Runtime, principal: Principal, job_id: str) -> JobResponse:
    """A job of the caller's tenant.

    Raises:
        NotFoundError: no such job in the tenant (404).
    """
    return JobResponse.of(JobQueue(runtime.db).get(job_id, tenant=principal.tenant))


def recent_jobs(runtime: Runtime, principal: Principal, *, collection: str | None,
                limit: int) -> JobList:
    """The tenant's most recent jobs, newest first (of one collection when named)."""
    jobs = JobQueue(runtime.db).recent(tenant=principal.tenant, collection=collection, limit=limit)
    now = datetime.now(UTC)
    return JobList(jobs=[JobResponse.of(j, now=now) for j in jobs])


def cancel_job(runtime: Runtime, principal: Principal, job_id: str) -> JobResponse:
    """Cancel a queued or running job of the caller's tenant.

    Raises:
        NotFoundError: no such job in the tenant (404).
        ConflictError: the job already ended (409).
    """
    return JobResponse.of(JobQueue(runtime.db).cancel(job_id, tenant=principal.tenant))


def reindex(runtime: Runtime, principal: Principal, collection: str) -> ReindexResponse:
    """Rebuild a collection's vector index from PostgreSQL.

    Raises:
        NotFoundError: the tenant has no such collection (404).
    """
    started = time.perf_counter()
    indexes, chunks = reindex_collection(runtime.db, tenant=principal.tenant, name=collection)
    return ReindexResponse(collection=collection, indexes=indexes, chunks=chunks,
                           seconds=round(time.perf_counter() - started, 3))


def reembed(runtime: Runtime, principal: Principal, collection: str) -> ReembedAccepted:
    """Queue a re-embed of a collection with the server's embedder.

    Raises:
        NotFoundError: the tenant has no such collection (404).
        ConfigError: the collection holds another model or dimension (400).
        ConflictError: a re-embed of it is already queued or running (409).
    """
    e = runtime.embedder
    target = Embedding(model=e.name, dim=e.dim, backend=e.settings.backend, precision=e.precision)
    chunks = check_reembed(runtime.db, tenant=principal.tenant, name=collection, target=target)
    job_id = JobQueue(runtime.db).enqueue_reembed(tenant=principal.tenant, collection=collection,
                                                  chunks_total=chunks,
                                                  backend=target.backend,
                                                  precision=target.precision)
    return ReembedAccepted(collection=collection, job_id=job_id, chunks=chunks)


def list_chunks(runtime: Runtime, principal: Principal, doc_id: str, *, limit: int,
                offset: int) -> ChunkList:
    """One page of the chunks of a document the caller may see, in reading order.

    Raises:
        NotFoundError: no such document in the caller's tenant, or its groups hide it (404).
    """
    document, chunks = _store(runtime, principal).list_chunks(
        doc_id, where=_visible(principal), limit=limit, offset=offset)
    return ChunkList.of(document, chunks, limit=limit, offset=offset)


def list_documents(runtime: Runtime, principal: Principal, *, collection: str, limit: int,
                   offset: int) -> DocumentList:
    """One page of the documents the caller may see in a collection of its tenant.

    Raises:
        NotFoundError: the tenant has no such collection (404).
    """
    docs, total = _store(runtime, principal).list_documents(
        collection=collection, where=_visible(principal), limit=limit, offset=offset)
    return DocumentList(documents=[DocumentModel.of(d) for d in docs], total=total, limit=limit,
                        offset=offset)


def chunk_context(runtime: Runtime, principal: Principal, chunk_id: str, *,
                  window: int) -> ChunkContext:
    """A chunk the caller could retrieve, with its neighbours and its document.

    Raises:
        NotFoundError: no such chunk in the caller's tenant, or its groups hide it (404).
    """
    document, chunks = _store(runtime, principal).chunk_context(
        chunk_id, window=window, where=_visible(principal))
    return ChunkContext.of(document, chunk_id, chunks)


def document_file(runtime: Runtime, principal: Principal, doc_id: str) -> DocumentFile:
    """The original file of a document the caller may read (a PDF).

    Raises:
        NotFoundError: the caller cannot see such a document in its tenant, or no file of
            it is kept (404 both; the message says which only to a caller who may see it).
    """
    return DocumentFiles(runtime.db, tenant=principal.tenant).read(doc_id,
                                                                  where=_visible(principal))


def inline_disposition(source: str) -> str:
    """A ``Content-Disposition`` that shows the file in the browser under its base name."""
    name = PurePosixPath(source).name or "document"
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", name)
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def delete_document(runtime: Runtime, principal: Principal, doc_id: str) -> None:
    """Delete a document the caller can see; only admin keys may.

    Raises:
        NotFoundError: the caller cannot see such a document in its tenant (404).
        ForbiddenError: it can, but the key is not an admin key (403).
    """
    store = _store(runtime, principal)
    store.get_document(doc_id, where=_visible(principal))
    if not principal.is_admin:
        raise ForbiddenError("deleting documents needs an admin key of the tenant")
    if not store.delete_document_by_id(doc_id):
        raise NotFoundError("no such document; list documents with GET /v1/documents")


def _check_embedder(store: Store, collection: str, embedder: LocalEmbedder) -> None:
    try:
        model, _ = store.collection_model(collection)
    except NotFoundError:
        return  # the worker creates it
    if model != embedder.name:
        raise ConfigError(f"collection {collection!r} holds embeddings of {model}, but this "
                          f"server embeds with {embedder.name}: upload into another collection")
    store.check_vectors(collection, backend=embedder.settings.backend, precision=embedder.precision)


def _store(runtime: Runtime, principal: Principal) -> Store:
    return runtime.store_for(principal.tenant)


def _visible(principal: Principal) -> SearchFilter:
    return SearchFilter(groups=principal.groups)
