"""Wire models of the HTTP API (pydantic), converted from core types at the edge."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from core.types import (
    Answer,
    Citation,
    CollectionStats,
    DocumentInfo,
    Job,
    JobStatus,
    MetadataCondition,
    ScoredChunk,
)

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_OPS = ("in", "gt", "gte", "lt", "lte")
Scalar = str | int | float | bool


class RetrievalOptions(BaseModel):
    """Per-request retrieval choices; unset fields use the server's settings."""

    collection: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=COLLECTION_PATTERN,
        description="collection to search; default: the server's default collection",
    )
    top_k: int | None = Field(default=None, ge=1, le=50, description="chunks to return")
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(
        default=None, description="retrieval mode; default: the server's (hybrid)")
    fusion: Literal["rrf", "weighted"] | None = Field(
        default=None, description="how hybrid mode fuses dense and BM25 rankings")
    dense_weight: float | None = Field(
        default=None, ge=0.0, le=1.0, description="weight of dense scores in weighted fusion")
    widen: int | None = Field(
        default=None, ge=0, le=5, description="neighbouring chunks added on each side of a hit")
    filters: dict[str, Scalar | dict[str, Scalar | list[Scalar]]] = Field(
        default_factory=dict,
        description='metadata filters: {"dept": "hr"}, {"year": {"gte": 2020}}, '
                    '{"lang": {"in": ["en", "de"]}}',
    )

    @field_validator("filters")
    @classmethod
    def _known_ops(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, cond in value.items():
            if not key or len(key) > 100:
                raise ValueError("filter keys are 1-100 characters")
            if isinstance(cond, dict):
                if len(cond) != 1 or next(iter(cond)) not in _OPS:
                    raise ValueError(f"filter {key!r}: use one of {', '.join(_OPS)}")
                op, operand = next(iter(cond.items()))
                if (op == "in") != isinstance(operand, list) or operand == []:
                    raise ValueError(f"filter {key!r}: 'in' takes a non-empty list, others a value")
                if op != "in" and isinstance(operand, bool):
                    raise ValueError(f"filter {key!r}: ranges take a number or a string")
        return value

    def conditions(self) -> tuple[MetadataCondition, ...]:
        out = []
        for key, cond in self.filters.items():
            if isinstance(cond, dict):
                op, operand = next(iter(cond.items()))
                out.append(MetadataCondition(key, op, operand))  # type: ignore[arg-type]
            else:
                out.append(MetadataCondition(key, "eq", cond))
        return tuple(out)


class QueryRequest(RetrievalOptions):
    question: str = Field(min_length=1, max_length=4000, description="the question to answer")
    crag: bool | None = Field(
        default=None, description="corrective RAG: grade retrieval, refine, re-retrieve or "
                                  "abstain; default: the server's setting")
    stream: bool = Field(
        default=False, description="server-sent events: token deltas, then citations and trace")


class SearchRequest(RetrievalOptions):
    query: str = Field(min_length=1, max_length=4000, description="what to search for")


class SearchHit(BaseModel):
    rank: int
    chunk_id: str
    document: str
    title: str
    text: str
    heading: str = ""
    page: int | None = None
    score: float = Field(description="the final score the hits are ranked by")
    scores: dict[str, float] = Field(description="every stage's score: dense_*, bm25, rrf, ...")

    @classmethod
    def of(cls, rank: int, h: ScoredChunk) -> SearchHit:
        return cls(rank=rank, chunk_id=h.chunk.id, document=h.source, title=h.title,
                   text=h.chunk.text, heading=h.chunk.heading, page=h.chunk.page, score=h.score,
                   scores=h.scores)


class SearchResponse(BaseModel):
    results: list[SearchHit]
    timings: dict[str, float] = Field(description="milliseconds per stage")


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
    trace: dict[str, Any] = Field(
        default_factory=dict,
        description="what the pipeline did: CRAG action, scores, strips kept, rewritten query")

    @classmethod
    def of(cls, a: Answer) -> QueryResponse:
        return cls(answer=a.text, status=a.status,
                   citations=[CitationModel.of(c) for c in a.citations],
                   sources=[CitationModel.of(c) for c in a.sources],
                   invalid_citations=list(a.invalid_citations), timings=a.timings,
                   usage=a.usage, trace=a.trace)


class UploadAccepted(BaseModel):
    job_id: str = Field(description="poll GET /v1/jobs/{job_id} for progress")


class JobProgressModel(BaseModel):
    files_total: int = Field(description="files in the upload")
    files_done: int = Field(description="files finished: ingested, unchanged or failed")
    chunks_written: int


class FileFailureModel(BaseModel):
    file: str = Field(description="the uploaded file name")
    reason: str


class JobResponse(BaseModel):
    id: str
    status: JobStatus = Field(
        description="queued, running, done (at least one file ingested) or failed")
    collection: str
    progress: JobProgressModel
    failures: list[FileFailureModel] = Field(description="files that could not be ingested")
    error: str | None = Field(default=None, description="why the job failed, when it did")
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def of(cls, job: Job) -> JobResponse:
        p = job.progress
        return cls(id=job.id, status=job.status, collection=job.collection,
                   progress=JobProgressModel(files_total=job.files_total, files_done=p.files_done,
                                             chunks_written=p.chunks_written),
                   failures=[FileFailureModel(file=f.file, reason=f.reason) for f in p.failures],
                   error=job.error, created_at=job.created_at, started_at=job.started_at,
                   finished_at=job.finished_at)


class DocumentModel(BaseModel):
    id: str
    collection: str
    source: str = Field(description="the file name or path it was ingested from")
    title: str
    chunk_count: int
    groups: list[str] = Field(description="ACL groups; empty = visible to the whole tenant")
    metadata: dict[str, Any]
    ingested_at: datetime

    @classmethod
    def of(cls, d: DocumentInfo) -> DocumentModel:
        return cls(id=d.id, collection=d.collection, source=d.source, title=d.title,
                   chunk_count=d.chunk_count, groups=list(d.acl_groups), metadata=d.metadata,
                   ingested_at=d.ingested_at)


class DocumentList(BaseModel):
    documents: list[DocumentModel]
    total: int = Field(description="documents the caller may see in the collection")
    limit: int
    offset: int


class CollectionModel(BaseModel):
    name: str
    embedder: str | None = Field(description="the embedding model its vectors come from")
    dim: int | None = Field(description="embedding dimension")
    documents: int = Field(description="documents the caller may see")
    chunks: int = Field(description="chunks of those documents")

    @classmethod
    def of(cls, c: CollectionStats) -> CollectionModel:
        return cls(name=c.name, embedder=c.embed_model, dim=c.embed_dim, documents=c.documents,
                   chunks=c.chunks)


class CollectionList(BaseModel):
    collections: list[CollectionModel]


class CreateCollectionRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=COLLECTION_PATTERN)
    embedder: str | None = Field(
        default=None, description="must be the server's embedding model; default: it")


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
