"""Wire models of the HTTP API (pydantic), converted from core types at the edge."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
)

from verity.core.types import (
    Answer,
    Chunk,
    Citation,
    CollectionStats,
    DocumentInfo,
    FilterOp,
    Job,
    JobKind,
    JobStatus,
    MetadataCondition,
    ScoredChunk,
)

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_OPS = ("in", "gt", "gte", "lt", "lte")
# PostgreSQL text and jsonb cannot hold NUL, so filter strings may not contain it.
_NO_NUL = r"^[^\x00]*$"
FilterStr = Annotated[str, StringConstraints(pattern=_NO_NUL)]
# Python's json module reads NaN and Infinity, which jsonb refuses: filters take finite numbers.
Scalar = FilterStr | int | FiniteFloat | bool
# Ranges compare numbers or strings (ISO dates), never booleans.
RangeOperand = (Annotated[StrictStr, StringConstraints(pattern=_NO_NUL)] | StrictInt
                | Annotated[StrictFloat, AllowInfNan(False)])


def unstorable(value: Any) -> str | None:
    """What in a JSON value jsonb cannot hold (NUL characters, NaN, infinities), if anything."""
    if isinstance(value, str):
        return "NUL (\\u0000) characters" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "NaN or infinite numbers"
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    if not isinstance(items, list):
        return None
    return next((problem for problem in map(unstorable, items) if problem), None)


def _json_integer(value: Any) -> Any:
    """Refuse what a lax ``int`` would take but JSON Schema's ``integer`` does not: true, "4"."""
    if isinstance(value, bool | str):
        raise ValueError("Input should be a valid integer")
    return value


# JSON Schema's integer: 4 and 4.0 (which schema-driven clients may send), never true or "4".
# It goes after the bounds in Annotated[...], so the schema shows them as minimum/maximum.
_JSON_INTEGER = BeforeValidator(_json_integer)


class _Operator(BaseModel):
    """``{"op": operand}`` with exactly one known operator; anything else is refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    op: ClassVar[FilterOp]


class InCondition(_Operator):
    op: ClassVar[FilterOp] = "in"
    in_: list[Scalar] = Field(alias="in", min_length=1, description="any of these values")


class GtCondition(_Operator):
    op: ClassVar[FilterOp] = "gt"
    gt: RangeOperand


class GteCondition(_Operator):
    op: ClassVar[FilterOp] = "gte"
    gte: RangeOperand


class LtCondition(_Operator):
    op: ClassVar[FilterOp] = "lt"
    lt: RangeOperand


class LteCondition(_Operator):
    op: ClassVar[FilterOp] = "lte"
    lte: RangeOperand


Condition = InCondition | GtCondition | GteCondition | LtCondition | LteCondition
FilterKey = Annotated[str, StringConstraints(min_length=1, max_length=100)]


def _keys_without_nul(schema: dict[str, Any]) -> None:
    """Declare that filter keys hold no NUL.

    Not a pattern on ``FilterKey``: pydantic turns key patterns into ``patternProperties``,
    which would leave keys outside the pattern unconstrained instead of refused.
    """
    schema["propertyNames"]["pattern"] = _NO_NUL


class _Request(BaseModel):
    """A request body: an unknown field is refused (422, naming it), never silently ignored.

    A misspelt ``"filter"`` for ``"filters"`` would otherwise return unfiltered results.
    """

    model_config = ConfigDict(extra="forbid")


class RetrievalOptions(_Request):
    """Per-request retrieval choices; unset fields use the server's settings."""

    collection: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=COLLECTION_PATTERN,
        description="collection to search; default: the server's default collection",
    )
    top_k: Annotated[int, Field(ge=1, le=50), _JSON_INTEGER] | None = Field(
        default=None, description="chunks to return")
    mode: Literal["dense", "bm25", "hybrid"] | None = Field(
        default=None, description="retrieval mode; default: the server's (hybrid)")
    fusion: Literal["rrf", "weighted"] | None = Field(
        default=None, description="how hybrid mode fuses dense and BM25 rankings")
    # Strict: a lax float would take true or "0.5", which the schema does not admit.
    dense_weight: StrictFloat | None = Field(
        default=None, ge=0.0, le=1.0, description="weight of dense scores in weighted fusion")
    widen: Annotated[int, Field(ge=0, le=5), _JSON_INTEGER] | None = Field(
        default=None, description="neighbouring chunks added on each side of a hit")
    # The types spell out every rule, so the OpenAPI schema admits exactly what is accepted.
    filters: dict[FilterKey, Scalar | Condition] = Field(
        default_factory=dict,
        description='metadata filters: {"dept": "hr"}, {"year": {"gte": 2020}}, '
                    '{"lang": {"in": ["en", "de"]}}',
        json_schema_extra=_keys_without_nul,
    )

    @field_validator("filters", mode="before")
    @classmethod
    def _known_ops(cls, value: Any) -> Any:
        """Clear messages for the usual mistakes; the types above then check the rest."""
        if not isinstance(value, dict):
            return value
        if problem := unstorable(value):
            raise ValueError(f"filter keys and values cannot contain {problem}")
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
            if isinstance(cond, _Operator):
                (operand,) = cond.model_dump().values()
                out.append(MetadataCondition(key, cond.op, operand))
            else:
                out.append(MetadataCondition(key, "eq", cond))
        return tuple(out)


class TurnModel(_Request):
    question: str = Field(min_length=1, max_length=4000, pattern=_NO_NUL)
    answer: str = Field(max_length=20_000, pattern=_NO_NUL)


class QueryRequest(RetrievalOptions):
    question: str = Field(min_length=1, max_length=4000, description="the question to answer")
    history: list[TurnModel] = Field(
        default_factory=list, max_length=50,
        description="earlier turns of the conversation, oldest first: a follow-up question is "
                    "rewritten into a standalone one with them before retrieval (see the trace's "
                    "'conversation')")
    crag: StrictBool | None = Field(
        default=None, description="corrective RAG: grade retrieval, refine, re-retrieve or "
                                  "abstain; default: the server's setting")
    stream: StrictBool = Field(
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
    score: float | None = Field(default=None, description="the score retrieval ranked it by")
    relevance: float | None = Field(
        default=None, description="its dense cosine similarity to the question (-1 to 1)")

    @classmethod
    def of(cls, c: Citation) -> CitationModel:
        return cls(n=c.n, document=c.document, chunk_id=c.chunk_id, text=c.text, page=c.page,
                   heading=c.heading, score=c.score, relevance=c.relevance)


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
    chunks_written: int = Field(description="chunks written (a re-embed: chunks re-embedded)")
    chunks_total: int = Field(default=0, description="a re-embed: chunks in the collection")


class FileFailureModel(BaseModel):
    file: str = Field(description="the uploaded file name")
    reason: str


FileStatus = Literal["queued", "ingesting", "done", "failed", "cancelled"]


class JobFileModel(BaseModel):
    name: str = Field(description="the uploaded file name")
    status: FileStatus = Field(description="queued, ingesting, done, failed or cancelled")
    reason: str | None = Field(default=None, description="why it failed, when it did")


class JobResponse(BaseModel):
    id: str
    kind: JobKind = Field(default="ingest",
                          description="ingest (uploaded files) or reembed (a collection's chunks)")
    status: JobStatus = Field(
        description="queued, running, done (at least one file ingested), failed or cancelled")
    collection: str
    progress: JobProgressModel
    files: list[JobFileModel] = Field(default_factory=list,
                                      description="each uploaded file, in upload order")
    failures: list[FileFailureModel] = Field(description="files that could not be ingested")
    error: str | None = Field(default=None, description="why the job failed, when it did")
    elapsed_s: float | None = Field(default=None, description="seconds since a worker started it")
    eta_s: float | None = Field(
        default=None, description="while running: seconds left at the rate files (a re-embed: "
                                  "chunks) finished so far")
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def of(cls, job: Job, *, now: datetime | None = None) -> JobResponse:
        p = job.progress
        elapsed = eta = None
        if job.started_at is not None:
            end = job.finished_at or now or datetime.now(job.started_at.tzinfo)
            elapsed = max(0.0, (end - job.started_at).total_seconds())
            done, total = ((p.chunks_written, job.chunks_total) if job.kind == "reembed"
                           else (p.files_done, job.files_total))
            if job.status == "running" and done:
                eta = elapsed / done * max(0, total - done)
        return cls(id=job.id, kind=job.kind, status=job.status, collection=job.collection,
                   progress=JobProgressModel(files_total=job.files_total, files_done=p.files_done,
                                             chunks_written=p.chunks_written,
                                             chunks_total=job.chunks_total),
                   files=job_files(job),
                   failures=[FileFailureModel(file=f.file, reason=f.reason) for f in p.failures],
                   error=job.error, elapsed_s=elapsed, eta_s=eta, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at)


def job_files(job: Job) -> list[JobFileModel]:
    """Each file's status: failures by name; the others finish in upload order."""
    failed = {f.file: f.reason for f in job.progress.failures}
    finished = job.progress.files_done - len(failed)
    out: list[JobFileModel] = []
    for name in job.files:
        if name in failed:
            out.append(JobFileModel(name=name, status="failed", reason=failed[name]))
            continue
        status: FileStatus
        if finished > 0 or job.status == "done":
            status = "done"
        elif job.status == "running":
            status = "ingesting" if not any(f.status == "ingesting" for f in out) else "queued"
        elif job.status == "queued":
            status = "queued"
        elif job.status == "cancelled":
            status = "cancelled"
        else:
            out.append(JobFileModel(name=name, status="failed", reason=job.error))
            continue
        finished -= 1
        out.append(JobFileModel(name=name, status=status))
    return out


class JobList(BaseModel):
    jobs: list[JobResponse] = Field(description="newest first")


class ReindexRequest(BaseModel):
    re_embed: StrictBool = Field(
        default=False, description="compute every chunk's vector again with the server's "
                                   "embedder, as a job (202), instead of rebuilding the index")


class ReembedAccepted(BaseModel):
    collection: str
    job_id: str = Field(description="the re-embed job: poll GET /v1/jobs/{job_id} for progress")
    chunks: int = Field(description="chunks to re-embed")


class ReindexResponse(BaseModel):
    collection: str
    indexes: list[str] = Field(description="the PostgreSQL indexes rebuilt")
    chunks: int = Field(description="chunks the rebuilt indexes cover")
    seconds: float


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


class ContextChunk(BaseModel):
    chunk_id: str
    ordinal: int = Field(description="its position in the document, from 0")
    text: str
    heading: str = Field(description="the heading path it sits under")
    page: int | None = None


class ChunkContext(BaseModel):
    document: DocumentModel
    chunk_id: str = Field(description="the chunk asked about")
    chunks: list[ContextChunk] = Field(description="it and its neighbours, in reading order")

    @classmethod
    def of(cls, document: DocumentInfo, chunk_id: str, chunks: list[Chunk]) -> ChunkContext:
        return cls(document=DocumentModel.of(document), chunk_id=chunk_id, chunks=[
            ContextChunk(chunk_id=c.id, ordinal=c.ordinal, text=c.text, heading=c.heading,
                         page=c.page) for c in chunks])


class DocumentChunk(BaseModel):
    chunk_id: str
    ordinal: int = Field(description="its position in the document, from 0")
    heading: str = Field(description="the heading path it sits under")
    page: int | None = None
    token_count: int = Field(description="tokens of the embedding model")
    text: str


class ChunkList(BaseModel):
    document: DocumentModel
    chunks: list[DocumentChunk] = Field(description="one page of its chunks, in reading order")
    total: int = Field(description="chunks in the document")
    limit: int
    offset: int

    @classmethod
    def of(cls, document: DocumentInfo, chunks: list[Chunk], *, limit: int,
           offset: int) -> ChunkList:
        return cls(document=DocumentModel.of(document), total=document.chunk_count, limit=limit,
                   offset=offset, chunks=[
                       DocumentChunk(chunk_id=c.id, ordinal=c.ordinal, heading=c.heading,
                                     page=c.page, token_count=c.token_count, text=c.text)
                       for c in chunks])


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
    backend: str | None = Field(default=None, description="the embedder backend: onnx or torch")
    precision: str | None = Field(default=None,
                                  description="the vectors' precision: float32, bfloat16 or int8")
    re_embedding_to: str | None = Field(
        default=None, description="while a re-embed runs: the precision the vectors move to")

    @classmethod
    def of(cls, c: CollectionStats) -> CollectionModel:
        return cls(name=c.name, embedder=c.embed_model, dim=c.embed_dim, documents=c.documents,
                   chunks=c.chunks, backend=c.embed_backend, precision=c.embed_precision,
                   re_embedding_to=c.reembed_precision)


class CollectionList(BaseModel):
    collections: list[CollectionModel]


class CreateCollectionRequest(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=COLLECTION_PATTERN)
    embedder: str | None = Field(
        default=None, description="must be the server's embedding model; default: it")


class KeyModel(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="the key's first characters, to recognise it; never the key")
    groups: list[str]
    admin: bool
    created_at: datetime
    revoked: bool


class KeyList(BaseModel):
    keys: list[KeyModel]


GroupName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_NO_NUL)]


class CreateKeyRequest(_Request):
    name: str = Field(default="", max_length=100, pattern=_NO_NUL,
                      description="a label, e.g. the app using it")
    groups: list[GroupName] = Field(default_factory=list, max_length=50,
                                    description="the ACL groups of its caller")
    admin: StrictBool = Field(default=False,
                              description="may manage keys, collections and documents")


class CreatedKey(BaseModel):
    key: str = Field(description="the key itself: shown this once, only its hash is stored")
    info: KeyModel


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool] = Field(description="database, embedder, generator")
    lexical_lag_s: dict[str, float | None] = Field(
        default_factory=dict,
        description="with VERITY_RETRIEVAL__LEXICAL=tantivy: for each tenant/collection index this "
                    "process has opened, the age in seconds of the oldest change not yet in it "
                    "(null until it is first built, while PostgreSQL answers its searches)")
    lexical_lag_changes: dict[str, int | None] = Field(
        default_factory=dict,
        description="the same indexes' changes (outbox rows) not yet applied")
    dense_lag_s: dict[str, float | None] = Field(
        default_factory=dict,
        description="with VERITY_RETRIEVAL__DENSE_INDEX=memory: for each tenant/collection dense "
                    "index this process holds, the age in seconds of the oldest change not yet in "
                    "it (null until it is first built, while PostgreSQL answers its searches)")
    dense_lag_changes: dict[str, int | None] = Field(
        default_factory=dict,
        description="the same indexes' changes (outbox rows) not yet applied")


class ErrorInfo(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorInfo


ERROR_DESCRIPTIONS = {
    400: "the body could not be parsed (not UTF-8 JSON), or conflicts with the server's setup",
    401: "no key, or an invalid or revoked one",
    403: "the key may not do this (admin operations)",
    404: "not found, or not visible to this key",
    409: "it already exists",
    413: "the body is over the size limit",
    422: "the body is not valid; the message names the field",
    429: "too many requests for this key; see Retry-After",
    503: "a backend (database, embedder) is down",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring ``codes`` with the one error schema.

    Every error a route can answer with must be declared; the schemathesis test checks it.
    """
    return {code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]}
            for code in codes}
