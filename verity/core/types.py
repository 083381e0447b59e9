"""Domain types shared by ingest, service and eval.

Plain frozen dataclasses: no FastAPI, psycopg or torch here. HTTP wire models
live in ``service/protocol.py`` and are converted at the edge.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

AnswerStatus = Literal["answered", "abstained", "generation_unavailable"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
# What a job does: ingest uploaded files, or re-embed a collection's chunks in place.
JobKind = Literal["ingest", "reembed"]


def document_id(*, collection: str, source: str) -> str:
    """A stable id for a document: the same source in the same collection always maps to it.

    Stable ids make re-ingestion idempotent and let a killed run resume into
    exactly the rows a clean run would have written.
    """
    digest = hashlib.sha256(f"{collection}\x00{source}".encode()).hexdigest()
    return digest[:20]


def chunk_id(doc_id: str, ordinal: int) -> str:
    """A stable id for the ``ordinal``-th chunk of a document."""
    return f"{doc_id}-{ordinal:05d}"


@dataclass(frozen=True, slots=True)
class Section:
    """A run of a document's text that shares one heading path and one page."""

    text: str
    heading: str = ""
    page: int | None = None


# Formats whose original file is kept beside the chunks, by suffix: a reader checking a
# citation sees the page itself. Text formats are shown from their chunks.
KEPT_FILE_TYPES: dict[str, str] = {".pdf": "application/pdf"}


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A document's original bytes, kept so a reader can see the file itself (a PDF's pages)."""

    media_type: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True, slots=True)
class Document:
    """A loaded source file (or record) before splitting.

    ``original`` holds the file's bytes for the formats whose file is kept beside the
    chunks (PDF); None for the others.
    """

    source: str
    title: str
    sections: tuple[Section, ...]
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)
    acl_groups: tuple[str, ...] = ()
    original: StoredFile | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrievable piece of a document."""

    id: str
    document_id: str
    ordinal: int
    text: str
    heading: str = ""
    page: int | None = None
    token_count: int = 0


@dataclass(frozen=True, slots=True)
class ScoredChunk:
    """A chunk with the score it was retrieved by and where it came from."""

    chunk: Chunk
    score: float
    source: str
    title: str = ""
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Citation:
    """A numbered source the answer cites with ``[n]``."""

    n: int
    document: str
    chunk_id: str
    text: str
    page: int | None = None
    heading: str = ""
    title: str = ""
    score: float | None = None  # the score retrieval ranked it by
    relevance: float | None = None  # its dense cosine to the question, when it has one


@dataclass(frozen=True, slots=True)
class Answer:
    """What a question gets back."""

    text: str
    status: AnswerStatus
    citations: tuple[Citation, ...]
    sources: tuple[Citation, ...]
    invalid_citations: tuple[int, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CollectionStats:
    name: str
    documents: int
    chunks: int
    embed_model: str | None
    embed_dim: int | None
    embed_backend: str | None = None
    embed_precision: str | None = None
    reembed_precision: str | None = None
    """While a re-embed runs: the precision the vectors are moving to."""


FilterOp = Literal["eq", "in", "gt", "gte", "lt", "lte"]


@dataclass(frozen=True, slots=True)
class MetadataCondition:
    """One condition on a document's metadata: ``key op value``."""

    key: str
    op: FilterOp
    value: Any


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What a search may see, applied inside the store query.

    Args:
        conditions: metadata conditions, all of which must hold.
        groups: the caller's ACL groups. ``None`` means no ACL restriction
            (trusted internal callers); otherwise a document is visible if it
            has no groups or shares at least one with the caller.
    """

    conditions: tuple[MetadataCondition, ...] = ()
    groups: tuple[str, ...] | None = None


DenseMode = Literal["float", "binary", "binary-rescore"]
"""How dense search compares vectors: ``float`` is exact cosine similarity over the float
vectors; ``binary`` ranks by Hamming distance over sign-bit codes alone; ``binary-rescore``
takes ``top_k x oversample`` binary candidates and rescores them with the float vectors."""


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A stored document as listed to a caller (no chunks)."""

    id: str
    collection: str
    source: str
    title: str
    chunk_count: int
    acl_groups: tuple[str, ...]
    metadata: dict[str, Any]
    ingested_at: datetime


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A file sent to the API for ingestion: its (base) name and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class FileFailure:
    """A file of an ingestion job that could not be ingested, and why."""

    file: str
    reason: str


@dataclass(frozen=True, slots=True)
class JobProgress:
    """How far an ingestion job got: files finished (ingested, unchanged or failed), chunks written."""

    files_done: int = 0
    chunks_written: int = 0
    failures: tuple[FileFailure, ...] = ()


@dataclass(frozen=True, slots=True)
class Job:
    """A job on one collection of one tenant: uploaded files to ingest, or (``kind``
    ``reembed``) the collection's chunks to embed again, ``chunks_total`` of them.

    ``attempt`` is the number of times a worker claimed it; a worker's updates
    only apply while the job is still on the attempt it claimed.
    """

    id: str
    tenant: str
    collection: str
    status: JobStatus
    files_total: int
    progress: JobProgress = JobProgress()
    acl_groups: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempt: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    files: tuple[str, ...] = ()
    kind: JobKind = "ingest"
    chunks_total: int = 0


FeedbackRating = Literal["up", "down"]
# Why an answer was marked down: wrong, missing part of the answer, a claim its citation does
# not support, an answer where the documents hold none (it should have abstained), or an
# abstention where the documents do hold the answer.
FeedbackReason = Literal["wrong", "incomplete", "unsupported", "should_abstain",
                         "should_answer", "other"]


@dataclass(frozen=True, slots=True)
class Feedback:
    """A person's verdict on one answer, with the answer as it was shown."""

    tenant: str
    collection: str
    rating: FeedbackRating
    question: str
    answer: str
    reason: FeedbackReason | None = None
    comment: str = ""
    correct_answer: str = ""
    answer_status: AnswerStatus = "answered"
    citations: tuple[dict[str, Any], ...] = ()
    trace: dict[str, Any] = field(default_factory=dict)
    key_id: int | None = None
    id: str = ""
    created_at: datetime | None = None

    def qa_record(self) -> dict[str, Any] | None:
        """This verdict as a ``verity eval qa`` JSONL record, or None when it cannot grade an answer.

        A correct answer given by the person becomes the gold answer, and a
        ``should_abstain`` verdict makes the question unanswerable; other verdicts say
        nothing a metric can check.
        """
        record: dict[str, Any] = {"id": self.id, "question": self.question}
        if self.correct_answer.strip():
            return {**record, "answers": [self.correct_answer.strip()]}
        if self.reason == "should_abstain":
            return {**record, "answers": [], "unanswerable": True}
        return None


@dataclass(frozen=True, slots=True)
class Turn:
    """An earlier exchange of a conversation: the question asked and the answer given."""

    question: str
    answer: str
