from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path
from fastapi.responses import Response

from service import collections, documents
from service.deps import AdminDep, PrincipalDep, RuntimeDep
from service.protocol import (
    COLLECTION_PATTERN,
    CollectionList,
    CollectionModel,
    CreateCollectionRequest,
    ReembedAccepted,
    ReindexRequest,
    ReindexResponse,
    error_responses,
)

router = APIRouter(tags=["collections"])

_ERRORS = error_responses(400, 401, 403, 404, 409, 422, 429, 503)


@router.get("/v1/collections", response_model=CollectionList, responses=_ERRORS)
def list_collections(runtime: RuntimeDep, principal: PrincipalDep) -> CollectionList:
    """The tenant's collections, counting the documents and chunks the caller may see."""
    return collections.list_collections(runtime, principal)


@router.post("/v1/collections", status_code=201, response_model=CollectionModel, responses=_ERRORS)
def create_collection(request: CreateCollectionRequest, runtime: RuntimeDep,
                      principal: AdminDep) -> CollectionModel:
    """Create an empty collection for the server's embedding model (admin keys)."""
    return collections.create_collection(runtime, principal, request)


@router.delete("/v1/collections/{name}", status_code=204, response_class=Response,
               responses=_ERRORS)
def delete_collection(name: Annotated[str, Path(max_length=64, pattern=COLLECTION_PATTERN)],
                      runtime: RuntimeDep, principal: AdminDep) -> Response:
    """Delete a collection with all its documents and chunks (admin keys)."""
    collections.delete_collection(runtime, principal, name)
    return Response(status_code=204)


@router.post("/v1/collections/{name}/reindex", response_model=ReindexResponse | ReembedAccepted,
             responses={**_ERRORS, 202: {"model": ReembedAccepted,
                                         "description": "the re-embed job was queued"}})
def reindex_collection(name: Annotated[str, Path(max_length=64, pattern=COLLECTION_PATTERN)],
                       runtime: RuntimeDep, principal: AdminDep, response: Response,
                       request: Annotated[ReindexRequest | None, Body()] = None,
                       ) -> ReindexResponse | ReembedAccepted:
    """Rebuild the collection's vector index from its rows in PostgreSQL (admin keys).

    Searches and writes go on meanwhile. With ``{"re_embed": true}`` every chunk's vector is
    computed again with the server's embedder instead, as a job (202; poll the job).
    """
    if request is not None and request.re_embed:
        response.status_code = 202
        return documents.reembed(runtime, principal, name)
    return documents.reindex(runtime, principal, name)
