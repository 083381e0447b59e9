"""Wire models of the HTTP API (pydantic), converted from core types at the edge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.types import Answer, Citation


class QueryRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000, description="the question to answer")
    collection: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="collection to search; default: the server's default collection",
    )
    top_k: int | None = Field(default=None, ge=1, le=50, description="sources to retrieve")
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(
        default=None, description="retrieval mode; default: the server's (hybrid)")
    fusion: Literal["rrf", "weighted"] | None = Field(
        default=None, description="how hybrid mode fuses dense and BM25 rankings")
    dense_weight: float | None = Field(
        default=None, ge=0.0, le=1.0, description="weight of dense scores in weighted fusion")


class CitationModel(BaseModel):
    n: int = Field(description="the number used in the answer, [n]")
    document: str = Field(description="source document (path as ingested)")
    chunk_id: str
    text: str
    page: int | None = None
    heading: str = ""

    @classmethod
    def of(cls, c: Citation) -> CitationModel:
        return cls(n=c.n, document=c.document, chunk_id=c.chunk_id, text=c.text, page=c.page,
                   heading=c.heading)


class QueryResponse(BaseModel):
    answer: str
    status: Literal["answered", "abstained", "generation_unavailable"]
    citations: list[CitationModel] = Field(description="sources the answer cites")
    sources: list[CitationModel] = Field(description="every source given to the model")
    invalid_citations: list[int] = Field(
        description="numbers the model cited that match no source (removed from the answer)")
    timings: dict[str, float] = Field(description="milliseconds per stage")
    usage: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, a: Answer) -> QueryResponse:
        return cls(answer=a.text, status=a.status,
                   citations=[CitationModel.of(c) for c in a.citations],
                   sources=[CitationModel.of(c) for c in a.sources],
                   invalid_citations=list(a.invalid_citations), timings=a.timings,
                   usage=a.usage)


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool] = Field(description="database, embedder, generator")


class ErrorInfo(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorInfo
