"""Evaluating a running Verity service over its HTTP API instead of the in-process pipeline.

``/v1/search`` serves retrieval runs and ``/v1/query`` QA runs; both send
``Authorization: Bearer KEY`` when a key is given. The collection must already
hold the dataset (``verity ingest`` into the service's data, or uploads).
Latencies measured here are round trips: HTTP, embedding, search and, for
answers, generation.

Example:
    >>> with ServiceClient("http://127.0.0.1:8000", api_key=key) as client:
    ...     answer = client.query("Who wrote Hamlet?", collection="qa-squad")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from eval.metrics import evaluate, means, rank
from eval.retrieval import ModeResult, RetrievalResult
from verity.core.errors import RagError
from verity.core.types import Answer, Citation

SERVICE_MODES = ("dense", "bm25", "hybrid")
MAX_TOP_K = 50
"""``/v1/search`` returns at most this many hits."""


class ServiceError(RagError):
    """The service could not be reached or refused a request; the message says what to do."""


class ServiceClient:
    """A small synchronous client for the two endpoints the harness calls."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 600.0) -> None:
        headers = {"User-Agent": "verity-eval"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json={k: v for k, v in body.items() if v is not None})
        except httpx.HTTPError as e:
            raise ServiceError(f"cannot reach the service at {self.base_url} ({type(e).__name__}); "
                               "is it running, and is --url right?") from e
        if response.status_code == 401:
            raise ServiceError(f"the service at {self.base_url} refused the request (401): pass a "
                               "valid key with --api-key")
        if response.status_code >= 400:
            raise ServiceError(f"{path} answered {response.status_code}: {_error_message(response)}")
        data: dict[str, Any] = response.json()
        return data

    def search(self, query: str, *, collection: str, top_k: int, mode: str | None = None
               ) -> dict[str, Any]:
        """``POST /v1/search``: ``{"results": [...], "timings": {...}}``."""
        return self._post("/v1/search", {"query": query, "collection": collection,
                                         "top_k": top_k, "mode": mode})

    def query(self, question: str, *, collection: str, crag: bool | None = None,
              top_k: int | None = None, mode: str | None = None) -> Answer:
        """``POST /v1/query`` as a :class:`verity.core.types.Answer`."""
        data = self._post("/v1/query", {"question": question, "collection": collection,
                                        "crag": crag, "top_k": top_k, "mode": mode})
        return answer_from_json(data)


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def answer_from_json(data: Mapping[str, Any]) -> Answer:
    """A ``/v1/query`` response body as an :class:`Answer`."""
    def citation(c: Mapping[str, Any]) -> Citation:
        return Citation(n=int(c["n"]), document=str(c["document"]), chunk_id=str(c["chunk_id"]),
                        text=str(c.get("text", "")), page=c.get("page"), heading=c.get("heading", ""))

    return Answer(text=str(data["answer"]), status=data["status"],
                  citations=tuple(citation(c) for c in data.get("citations", [])),
                  sources=tuple(citation(c) for c in data.get("sources", [])),
                  invalid_citations=tuple(data.get("invalid_citations", [])),
                  timings=dict(data.get("timings", {})), usage=dict(data.get("usage", {})),
                  trace=dict(data.get("trace") or {}))


def remote_answerer(client: ServiceClient, *, collection: str, crag: bool, top_k: int | None,
                    mode: str | None) -> Callable[[str], Answer]:
    """A QA answerer that asks the service."""
    return lambda q: client.query(q, collection=collection, crag=crag, top_k=top_k, mode=mode)


def evaluate_remote_retrieval(
    client: ServiceClient, *, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
    collection: str, configs: Sequence[tuple[str, str | None, int]],
    metrics: Sequence[str], progress: Callable[[int], None] | None = None,
) -> RetrievalResult:
    """Search every judged query through ``/v1/search`` for each ``(name, mode, top_k)``.

    Documents are ranked by their best chunk, as in process. The latency is the
    HTTP round trip, query embedding included, so ``embed_ms`` stays empty.

    Raises:
        ValueError: a judged query without text, or a top_k above the service's limit.
        ServiceError: the service failed.
    """
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise ValueError(f"judged queries without text: {', '.join(missing[:5])}")
    modes = []
    for name, mode, top_k in configs:
        if top_k > MAX_TOP_K:
            raise ValueError(f"{name}: /v1/search returns at most {MAX_TOP_K} hits; lower top_k")
        modes.append(_remote_mode(client, queries, qrels, collection=collection, name=name,
                                  mode=mode, top_k=top_k, metrics=metrics, progress=progress))
    depth = max((c[2] for c in configs), default=0)
    return RetrievalResult(collection=collection, model=f"service at {client.base_url}", depth=depth,
                           oversample=1, embed_ms={}, modes=modes)


def _remote_mode(client: ServiceClient, queries: Mapping[str, str],
                 qrels: Mapping[str, Mapping[str, int]], *, collection: str, name: str,
                 mode: str | None, top_k: int, metrics: Sequence[str],
                 progress: Callable[[int], None] | None) -> ModeResult:
    run: dict[str, dict[str, float]] = {}
    elapsed: dict[str, float] = {}
    for qid in qrels:
        started = time.perf_counter()
        hits = client.search(queries[qid], collection=collection, top_k=top_k, mode=mode)["results"]
        elapsed[qid] = (time.perf_counter() - started) * 1000
        scores: dict[str, float] = {}
        for hit in hits:
            scores[hit["document"]] = max(scores.get(hit["document"], float("-inf")), hit["score"])
        run[qid] = scores
        if progress:
            progress(1)
    per_query = evaluate(run, qrels, metrics)
    docs = sum(len(r) for r in run.values()) / len(run) if run else 0.0
    return ModeResult(mode=name, metrics=means(per_query), per_query=per_query, search_ms=elapsed,
                      docs_per_query=docs, rankings={q: rank(s) for q, s in run.items()})
