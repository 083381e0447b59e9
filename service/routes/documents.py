from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response

from service import documents
from service.deps import AdminDep, MetricsDep, PrincipalDep, RuntimeDep
from service.protocol import (
    COLLECTION_PATTERN,
    ChunkContext,
    ChunkList,
    DocumentList,
    JobList,
    JobResponse,
    UploadAccepted,
    error_responses,
)
from verity.core.types import KEPT_FILE_TYPES

router = APIRouter(tags=["documents"])

_ERRORS = error_responses(400, 401, 403, 404, 413, 422, 429, 503)
_CANCEL_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429, 503)

# At most 50 comma-separated groups of at most 100 characters, without NUL, which
# PostgreSQL's text cannot hold.
GROUPS_PATTERN = r"^[^,\x00]{0,100}(,[^,\x00]{0,100}){0,49}$"

CollectionForm = Annotated[str, Form(min_length=1, max_length=64, pattern=COLLECTION_PATTERN,
                                     description="the collection to ingest into")]
CollectionQuery = Annotated[str | None, Query(
    min_length=1, max_length=64, pattern=COLLECTION_PATTERN,
    description="the collection; default: the server's default collection")]


@router.post("/v1/documents", status_code=202, response_model=UploadAccepted, responses=_ERRORS)
def upload_documents(
    files: Annotated[list[UploadFile], File(description="one or more md, txt, html or pdf files")],
    collection: CollectionForm,
    runtime: RuntimeDep,
    principal: AdminDep,
    metrics: MetricsDep,
    groups: Annotated[str | None, Form(
        pattern=GROUPS_PATTERN,
        description="comma-separated ACL groups: at most 50, of at most 100 characters")] = None,
    metadata: Annotated[str | None, Form(description="a JSON object for every document")] = None,
) -> UploadAccepted:
    """Queue files for ingestion (admin keys); poll the returned job for progress."""
    return documents.enqueue_upload(
        runtime, principal, collection=collection, files=documents.read_uploads(files),
        groups=documents.parse_groups(groups), metadata=documents.parse_metadata(metadata),
        metrics=metrics)


@router.get("/v1/jobs", response_model=JobList, responses=_ERRORS)
def list_jobs(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    collection: CollectionQuery = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """The tenant's most recent ingestion jobs, newest first; of one collection when named."""
    return documents.recent_jobs(runtime, principal, collection=collection, limit=limit)


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobResponse, responses=_CANCEL_ERRORS)
def cancel_job(job_id: str, runtime: RuntimeDep, principal: AdminDep) -> JobResponse:
    """Cancel a queued or running job (admin keys); files already ingested stay."""
    return documents.cancel_job(runtime, principal, job_id)


@router.get("/v1/jobs/{job_id}", response_model=JobResponse, responses=_ERRORS)
def get_job(job_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> JobResponse:
    """An ingestion job of the caller's tenant: status, progress and per-file failures."""
    return documents.job_status(runtime, principal, job_id)


MAX_OFFSET = 2**63 - 1


@router.get("/v1/documents", response_model=DocumentList, responses=_ERRORS)
def list_documents(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    collection: CollectionQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    # PostgreSQL's OFFSET is a bigint: larger values would fail in the database (500), not here.
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DocumentList:
    """The documents of a collection the caller may see, by source, a page at a time."""
    return documents.list_documents(runtime, principal,
                                    collection=collection or runtime.settings.collection,
                                    limit=limit, offset=offset)


@router.get("/v1/chunks/{chunk_id}/context", response_model=ChunkContext, responses=_ERRORS)
def get_chunk_context(
    chunk_id: str,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    window: Annotated[int, Query(ge=0, le=10, description="neighbours on each side")] = 2,
) -> ChunkContext:
    """A chunk the caller may read, with its neighbours, heading path and document."""
    return documents.chunk_context(runtime, principal, chunk_id, window=window)


# The file is shown by the browser as it is; it may run nothing and load nothing (a PDF
# viewer still renders it), and the browser may not guess another type.
FILE_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the document's original bytes", "content": {
        media_type: {"schema": {"type": "string", "format": "binary"}}
        for media_type in sorted(set(KEPT_FILE_TYPES.values()))}},
    **_ERRORS,
}


@router.get("/v1/documents/{doc_id}/file", response_class=Response, responses=_FILE_RESPONSES)
def get_document_file(doc_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """The original file of a document the caller may read (PDFs are kept), shown inline."""
    kept = documents.document_file(runtime, principal, doc_id)
    return Response(content=kept.content, media_type=kept.media_type, headers={
        "Content-Disposition": documents.inline_disposition(kept.source),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": FILE_POLICY,
        "Cache-Control": "private, no-cache",
        "ETag": f'"{kept.sha256}"',
    })


@router.get("/v1/documents/{doc_id}/chunks", response_model=ChunkList, responses=_ERRORS)
def list_document_chunks(
    doc_id: str,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ChunkList:
    """A document the caller may read and one page of its chunks, in reading order."""
    return documents.list_chunks(runtime, principal, doc_id, limit=limit, offset=offset)


@router.delete("/v1/documents/{doc_id}", status_code=204, response_class=Response,
               responses=_ERRORS)
def delete_document(doc_id: str, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """Delete a document and its chunks (admin keys)."""
    documents.delete_document(runtime, principal, doc_id)
    return Response(status_code=204)
