"""Typed HTTP clients for Verity's ``POST /v1/search`` and ``POST /v1/query``.

Only httpx and the standard library are imported: the wire format is mirrored
here in frozen dataclasses instead of importing ``service.protocol``, so an
application that calls Verity does not load the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypedDict, Unpack

import httpx

Mode = Literal["hybrid", "dense", "bm25"]
Fusion = Literal["rrf", "weighted"]
Status = Literal["answered", "abstained", "generation_unavailable"]

DEFAULT_TIMEOUT_S = 120.0
"""Long enough for ``/v1/query`` on a small local model; searches take far less."""

_USER_AGENT = "verity-client/0.1.0"


class VerityError(Exception):
    """Base class of every error the clients raise."""


class VerityConnectionError(VerityError):
    """The server could not be reached, or did not answer within the timeout."""


class VerityAPIError(VerityError):
    """The server answered with an error, ``{"error": {"type": ..., "message": ...}}``.

    Attributes:
        status_code: the HTTP status, e.g. 401.
        type: the server's error type, e.g. ``unauthorized`` or ``not_found``
            (``http_error`` when the body was not Verity's error schema).
        message: the server's message, which says what to do next.
        retry_after_s: for 429, the seconds the server asked to wait.
    """

    def __init__(self, status_code: int, *, type: str, message: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"Verity answered {status_code} {type}: {message}")
        self.status_code = status_code
        self.type = type
        self.message = message
        self.retry_after_s = retry_after_s

    @classmethod
    def from_response(cls, response: httpx.Response) -> VerityAPIError:
        """The error a non-2xx response carries.

        A body that is not Verity's error schema (a proxy's HTML page, say)
        gives type ``http_error`` and the start of the body as the message.
        """
        retry_after = response.headers.get("retry-after", "")
        retry_after_s = float(retry_after) if retry_after.isdigit() else None
        try:
            info = response.json()["error"]
            kind, message = str(info["type"]), str(info["message"])
        except (ValueError, KeyError, TypeError):
            text = " ".join(response.text.split())[:200]
            kind, message = "http_error", f"{response.reason_phrase}: {text}".rstrip(": ")
        return cls(response.status_code, type=kind, message=message, retry_after_s=retry_after_s)


class RetrievalOptions(TypedDict, total=False):
    """Per-request retrieval choices; omitted or ``None`` ones use the server's settings.

    Keys:
        collection: the collection to search (default: the server's).
        top_k: how many chunks (1 to 50).
        mode: ``hybrid``, ``dense`` or ``bm25``.
        fusion: ``rrf`` or ``weighted`` (hybrid mode).
        dense_weight: weight of dense scores in weighted fusion (0 to 1).
        widen: neighbouring chunks added on each side of a hit (0 to 5).
        filters: metadata conditions, e.g. ``{"dept": "hr", "year": {"gte": 2020}}``.
    """

    collection: str | None
    top_k: int | None
    mode: Mode | None
    fusion: Fusion | None
    dense_weight: float | None
    widen: int | None
    filters: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One ranked chunk of ``/v1/search``."""

    rank: int
    chunk_id: str
    document: str
    title: str
    text: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    heading: str = ""
    page: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchHit:
        return cls(rank=int(data["rank"]), chunk_id=str(data["chunk_id"]),
                   document=str(data["document"]), title=str(data.get("title", "")),
                   text=str(data["text"]), score=float(data["score"]),
                   scores={str(k): float(v) for k, v in data.get("scores", {}).items()},
                   heading=str(data.get("heading") or ""), page=data.get("page"))

    def metadata(self) -> dict[str, Any]:
        """Where the chunk comes from and how it scored, as framework retrievers attach it."""
        return {"document": self.document, "chunk_id": self.chunk_id, "score": self.score,
                "scores": dict(self.scores), "heading": self.heading, "page": self.page,
                "title": self.title}


@dataclass(frozen=True, slots=True)
class SearchResult:
    """What ``/v1/search`` returns: hits best first, and milliseconds per stage."""

    results: tuple[SearchHit, ...]
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchResult:
        return cls(results=tuple(SearchHit.from_json(h) for h in data["results"]),
                   timings=dict(data.get("timings", {})))


@dataclass(frozen=True, slots=True)
class Citation:
    """A source of an answer; ``n`` is the number the answer cites it by, ``[n]``."""

    n: int
    document: str
    chunk_id: str
    text: str
    page: int | None = None
    heading: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Citation:
        return cls(n=int(data["n"]), document=str(data["document"]), chunk_id=str(data["chunk_id"]),
                   text=str(data["text"]), page=data.get("page"), heading=str(data.get("heading") or ""))


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What ``/v1/query`` returns: the answer, its citations and every source given to the model."""

    answer: str
    status: Status
    citations: tuple[Citation, ...]
    sources: tuple[Citation, ...]
    invalid_citations: tuple[int, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueryResult:
        return cls(answer=str(data["answer"]), status=data["status"],
                   citations=tuple(Citation.from_json(c) for c in data["citations"]),
                   sources=tuple(Citation.from_json(c) for c in data["sources"]),
                   invalid_citations=tuple(data.get("invalid_citations", ())),
                   timings=dict(data.get("timings", {})), usage=dict(data.get("usage", {})))


def _client_options(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"User-Agent": _USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url, "headers": headers, "timeout": timeout}


def _body(field_name: str, text: str, options: RetrievalOptions) -> dict[str, Any]:
    body: dict[str, Any] = {field_name: text}
    body.update({k: dict(v) if isinstance(v, Mapping) else v
                 for k, v in options.items() if v is not None})
    return body


def _json(response: httpx.Response) -> Mapping[str, Any]:
    """The JSON body of a successful response.

    Raises:
        VerityAPIError: the status is not 2xx.
        VerityError: the body is not a JSON object (``base_url`` is probably not Verity).
    """
    if not response.is_success:
        raise VerityAPIError.from_response(response)
    try:
        data = response.json()
    except ValueError as e:
        raise VerityError(f"{response.url} did not answer with JSON; is base_url a Verity server?") from e
    if not isinstance(data, dict):
        raise VerityError(f"{response.url} answered with unexpected JSON; is base_url a Verity server?")
    return data


def _transport_error(e: httpx.TransportError, base_url: str, timeout: float) -> VerityConnectionError:
    if isinstance(e, httpx.TimeoutException):
        return VerityConnectionError(f"Verity at {base_url} did not answer within {timeout:g} s; "
                                     "pass a larger timeout= or check the server's load")
    return VerityConnectionError(f"cannot reach Verity at {base_url} ({type(e).__name__}: {e}); "
                                 "check base_url and that `verity serve` is running")


class VerityClient:
    """A blocking client for one Verity server.

    Example:
        >>> with VerityClient("http://127.0.0.1:8000", api_key="vk_...") as verity:
        ...     hits = verity.search("parental leave", collection="handbook", top_k=3).results
        ...     answer = verity.query("How long is parental leave?", collection="handbook")

    Args:
        base_url: where ``verity serve`` listens, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer KEY``; None for a ``--dev`` server.
        timeout: seconds to wait for each request.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._http = httpx.Client(**_client_options(base_url, api_key, timeout))

    def search(self, query: str, /, **options: Unpack[RetrievalOptions]) -> SearchResult:
        """Ranked chunks for ``query``, without generation.

        Raises:
            VerityAPIError: the server refused the request (401, 404, 422, 429, 503, ...).
            VerityConnectionError: the server could not be reached in time.
        """
        return SearchResult.from_json(self._post("/v1/search", _body("query", query, options)))

    def query(self, question: str, /, **options: Unpack[RetrievalOptions]) -> QueryResult:
        """A grounded answer to ``question`` with numbered citations.

        Raises:
            VerityAPIError: the server refused the request (401, 404, 422, 429, 503, ...).
            VerityConnectionError: the server could not be reached in time.
        """
        return QueryResult.from_json(self._post("/v1/query", _body("question", question, options)))

    def _post(self, path: str, body: dict[str, Any]) -> Mapping[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except httpx.TransportError as e:
            raise _transport_error(e, self.base_url, self.timeout) from e
        return _json(response)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncVerityClient:
    """The asyncio twin of :class:`VerityClient`.

    Example:
        >>> async with AsyncVerityClient("http://127.0.0.1:8000", api_key="vk_...") as verity:
        ...     hits = (await verity.search("parental leave", top_k=3)).results

    Args:
        base_url: where ``verity serve`` listens, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer KEY``; None for a ``--dev`` server.
        timeout: seconds to wait for each request.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._http = httpx.AsyncClient(**_client_options(base_url, api_key, timeout))

    async def search(self, query: str, /, **options: Unpack[RetrievalOptions]) -> SearchResult:
        """Ranked chunks for ``query``; raises as :meth:`VerityClient.search` does."""
        return SearchResult.from_json(await self._post("/v1/search", _body("query", query, options)))

    async def query(self, question: str, /, **options: Unpack[RetrievalOptions]) -> QueryResult:
        """A grounded answer to ``question``; raises as :meth:`VerityClient.query` does."""
        return QueryResult.from_json(
            await self._post("/v1/query", _body("question", question, options)))

    async def _post(self, path: str, body: dict[str, Any]) -> Mapping[str, Any]:
        try:
            response = await self._http.post(path, json=body)
        except httpx.TransportError as e:
            raise _transport_error(e, self.base_url, self.timeout) from e
        return _json(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


__all__ = [
    "AsyncVerityClient", "Citation", "DEFAULT_TIMEOUT_S", "Fusion", "Mode", "QueryResult",
    "RetrievalOptions", "SearchHit", "SearchResult", "VerityAPIError", "VerityClient",
    "VerityConnectionError", "VerityError",
]
