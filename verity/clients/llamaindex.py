"""A LlamaIndex retriever over Verity's ``POST /v1/search``.

Needs llama-index-core: ``pip install "verity[clients]"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from verity.clients.http import (
    DEFAULT_TIMEOUT_S,
    AsyncVerityClient,
    Mode,
    RetrievalOptions,
    SearchResult,
    VerityClient,
)

try:
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        'verity.clients.llamaindex needs llama-index-core: pip install "verity[clients]"'
    ) from e

# Retrieval bookkeeping that would only add noise to what the LLM or an embedder reads.
_HIDDEN_METADATA = ["chunk_id", "score", "scores"]


class VerityRetriever(BaseRetriever):
    """Chunks from a Verity server as LlamaIndex ``NodeWithScore``s, best first.

    Each node is a ``TextNode`` whose id is the chunk id and whose metadata holds
    ``document``, ``chunk_id``, ``score``, ``scores``, ``heading``, ``page`` and ``title``
    (the LLM sees only ``document``, ``heading``, ``page`` and ``title``).
    Errors from the server are raised as :class:`verity.clients.http.VerityAPIError`.

    Example:
        >>> retriever = VerityRetriever("http://127.0.0.1:8000", api_key="vk_...",
        ...                             collection="handbook", top_k=4)
        >>> nodes = retriever.retrieve("How long is parental leave?")
        >>> nodes[0].node.metadata["document"], nodes[0].score
        ('handbook/leave.md', 0.032...)

    Args:
        base_url: where ``verity serve`` listens, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer KEY``; None for a ``--dev`` server.
        collection: the collection to search; None for the server's default.
        top_k: how many chunks (1 to 50); None for the server's default.
        mode: ``hybrid``, ``dense`` or ``bm25``; None for the server's default.
        filters: metadata conditions, e.g. ``{"dept": "hr"}``.
        timeout: seconds to wait for each request.
        callback_manager: LlamaIndex callbacks.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, collection: str | None = None,
                 top_k: int | None = None, mode: Mode | None = None,
                 filters: Mapping[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 callback_manager: CallbackManager | None = None) -> None:
        super().__init__(callback_manager=callback_manager)
        self.base_url = base_url
        self._api_key = api_key
        self.timeout = timeout
        self.options = RetrievalOptions(collection=collection, top_k=top_k, mode=mode,
                                        filters=dict(filters) if filters else None)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        with VerityClient(self.base_url, api_key=self._api_key, timeout=self.timeout) as client:
            return _nodes(client.search(query_bundle.query_str, **self.options))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        async with AsyncVerityClient(self.base_url, api_key=self._api_key,
                                     timeout=self.timeout) as client:
            return _nodes(await client.search(query_bundle.query_str, **self.options))


def _nodes(result: SearchResult) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(id_=hit.chunk_id, text=hit.text, metadata=hit.metadata(),
                                    excluded_llm_metadata_keys=list(_HIDDEN_METADATA),
                                    excluded_embed_metadata_keys=list(_HIDDEN_METADATA)),
                      score=hit.score)
        for hit in result.results
    ]


__all__ = ["VerityRetriever"]
