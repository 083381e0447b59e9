"""Deterministic stand-ins for remote APIs we do not run in tests: real HTTP, fixed answers.

Serve them with :func:`tests.helpers.serve_app`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def overlap(query: str, document: str) -> float:
    """How many distinct query words (lower-cased, 3+ letters) the document contains."""
    words = {w.strip(".,?!").lower() for w in query.split() if len(w.strip(".,?!")) >= 3}
    text = document.lower()
    return float(sum(1 for w in words if w in text))


def rerank_app() -> FastAPI:
    """A ``/rerank`` server scoring documents by word overlap with the query.

    ``/v1/rerank`` answers like Cohere and vLLM (``results[].relevance_score``,
    at most ``top_n`` results, best first), ``/tei/rerank`` like Text Embeddings
    Inference (a bare list of ``{index, score}``, from ``texts``); ``/slow/rerank``
    takes two seconds, ``/broken/rerank`` fails with 500 and ``/odd/rerank``
    answers JSON of neither shape. Every request body is kept in ``app.state.requests``.
    """
    app = FastAPI()
    app.state.requests = []

    @app.post("/v1/rerank")
    async def cohere(request: Request) -> dict[str, Any]:
        body = await request.json()
        app.state.requests.append(body)
        scored = sorted(((overlap(body["query"], d), i) for i, d in enumerate(body["documents"])),
                        key=lambda pair: (-pair[0], pair[1]))[:body.get("top_n")]
        return {"id": "fake", "model": body.get("model"),
                "results": [{"index": i, "relevance_score": s, "document": {"text": body["documents"][i]}}
                            for s, i in scored]}

    @app.post("/tei/rerank")
    async def tei(request: Request) -> list[dict[str, Any]]:
        body = await request.json()
        app.state.requests.append(body)
        return [{"index": i, "score": overlap(body["query"], t)} for i, t in enumerate(body["texts"])]

    @app.post("/slow/rerank")
    async def slow(request: Request) -> dict[str, Any]:
        await asyncio.sleep(2.0)
        return {"results": []}

    @app.post("/broken/rerank")
    async def broken(request: Request) -> JSONResponse:
        return JSONResponse({"error": "boom"}, status_code=500)

    @app.post("/odd/rerank")
    async def odd(request: Request) -> dict[str, Any]:
        return {"data": "neither shape"}

    return app


def judge_app() -> FastAPI:
    """An OpenAI-compatible server that gives no log-probabilities for chat, only for completions.

    The completions answer says " yes" (log-probability -0.1, " no" -2.3) when
    the prompt's passage mentions "scurvy", and the reverse otherwise.
    """
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake-judge", "object": "model", "created": 0,
                                            "owned_by": "tests"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "length", "logprobs": None,
                             "message": {"role": "assistant", "content": "Yes"}}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        passage = body["prompt"].split("<passage>")[-1].split("</passage>")[0]
        yes, no = (-0.1, -2.3) if "scurvy" in passage.lower() else (-2.3, -0.1)
        top = {" yes": yes, " no": no}
        return {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "length", "text": " yes",
                             "logprobs": {"tokens": [" yes"], "token_logprobs": [yes],
                                          "text_offset": [0], "top_logprobs": [top]}}]}

    return app
