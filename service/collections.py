"""Collections of the caller's tenant: list (with counts the caller may see), create, delete."""

from __future__ import annotations

from service.protocol import CollectionList, CollectionModel, CreateCollectionRequest
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import Principal
from verity.core.errors import ConfigError
from verity.core.types import CollectionStats, SearchFilter


def list_collections(runtime: Runtime, principal: Principal) -> CollectionList:
    """The tenant's collections; documents and chunks outside the caller's groups are not counted."""
    stats = runtime.store_for(principal.tenant).stats(where=SearchFilter(groups=principal.groups))
    return CollectionList(collections=[CollectionModel.of(s) for s in stats])


def create_collection(runtime: Runtime, principal: Principal,
                      request: CreateCollectionRequest) -> CollectionModel:
    """Create an empty collection for the server's embedding model.

    Raises:
        ConfigError: the request names another embedding model (400).
        ConflictError: the tenant already has a collection of that name (409).
    """
    model, dim = runtime.embedder.name, runtime.embedder.dim
    asked = request.embedder.removeprefix("bundled:") if request.embedder else model
    if asked != model:
        raise ConfigError(f"this server embeds with {model}, not {asked}: leave 'embedder' out, "
                          "or run a server configured with that model")
    runtime.store_for(principal.tenant).create_collection(
        request.name, embed_model=model, embed_dim=dim,
        embed_backend=runtime.embedder.settings.backend, embed_precision=runtime.embedder.precision)
    return CollectionModel.of(CollectionStats(
        name=request.name, documents=0, chunks=0, embed_model=model, embed_dim=dim,
        embed_backend=runtime.embedder.settings.backend, embed_precision=runtime.embedder.precision))


def delete_collection(runtime: Runtime, principal: Principal, name: str) -> None:
    """Delete a collection of the tenant with everything in it.

    Raises:
        NotFoundError: the tenant has no such collection (404).
    """
    runtime.store_for(principal.tenant).delete_collection(name)
