"""Python clients for Verity's HTTP API.

``verity.clients.http`` needs only httpx. ``verity.clients.langchain`` and ``verity.clients.llamaindex``
are retrievers for those frameworks; install them with ``pip install "verity[clients]"``.
Nothing here imports the service, so an application can depend on this package alone.
"""

from verity.clients.http import (
    AsyncVerityClient,
    Citation,
    QueryResult,
    RetrievalOptions,
    SearchHit,
    SearchResult,
    VerityAPIError,
    VerityClient,
    VerityConnectionError,
    VerityError,
)

__all__ = [
    "AsyncVerityClient",
    "Citation",
    "QueryResult",
    "RetrievalOptions",
    "SearchHit",
    "SearchResult",
    "VerityAPIError",
    "VerityClient",
    "VerityConnectionError",
    "VerityError",
]
