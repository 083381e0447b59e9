"""A LangChain retriever over Verity's ``POST /v1/search``.

Needs langchain-core: ``pip install "verity[clients]"``.
"""

from __future__ import annotations

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
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import Field, SecretStr
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError('verity.clients.langchain needs langchain-core: pip install "verity[clients]"') from e


class VerityRetriever(BaseRetriever):
    """Chunks from a Verity server as LangChain ``Document``s, best first.

    Each document's ``page_content`` is the chunk's text; its ``metadata`` holds
    ``document``, ``chunk_id``, ``score``, ``scores``, ``heading``, ``page`` and ``title``.
    Errors from the server are raised as :class:`verity.clients.http.VerityAPIError`.

    Example:
        >>> retriever = VerityRetriever(base_url="http://127.0.0.1:8000", api_key="vk_...",
        ...                             collection="handbook", top_k=4)
        >>> docs = retriever.invoke("How long is parental leave?")
        >>> docs[0].metadata["document"]
        'handbook/leave.md'
    """

    base_url: str = Field(description="where `verity serve` listens, e.g. http://127.0.0.1:8000")
    api_key: SecretStr | None = Field(default=None, description="API key; None for a --dev server")
    collection: str | None = Field(default=None, description="collection; default: the server's")
    top_k: int | None = Field(default=None, ge=1, le=50, description="chunks to return")
    mode: Mode | None = Field(default=None, description="hybrid, dense or bm25")
    filters: dict[str, Any] = Field(default_factory=dict, description="metadata conditions")
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="seconds per request")

    def _client_args(self) -> dict[str, Any]:
        key = self.api_key.get_secret_value() if self.api_key else None
        return {"api_key": key, "timeout": self.timeout}

    def _options(self) -> RetrievalOptions:
        return RetrievalOptions(collection=self.collection, top_k=self.top_k, mode=self.mode,
                                filters=self.filters or None)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        with VerityClient(self.base_url, **self._client_args()) as client:
            return _documents(client.search(query, **self._options()))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        async with AsyncVerityClient(self.base_url, **self._client_args()) as client:
            return _documents(await client.search(query, **self._options()))


def _documents(result: SearchResult) -> list[Document]:
    return [Document(page_content=hit.text, metadata=hit.metadata(), id=hit.chunk_id)
            for hit in result.results]


__all__ = ["VerityRetriever"]
