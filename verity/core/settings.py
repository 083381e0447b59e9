"""All configuration, in one pydantic-settings class.

Only this module reads the environment. Library code receives the section it
needs as a constructor argument; nothing imports a global settings object.

Environment variables use the prefix ``VERITY_`` and ``__`` between nested
names, e.g. ``VERITY_STORE__DSN`` or ``VERITY_LLM__BASE_URL``. A ``.env`` file
in the working directory is read too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from verity.core.lexical import BM25_B, BM25_K1

BUNDLED_EMBEDDER = "bundled:all-MiniLM-L6-v2"
BUNDLED_GGUF = "bundled:qwen2.5-coder-0.5b-instruct-q4_k_m"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/verity``, or ``~/.local/share/verity``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "verity"


class StoreSettings(BaseModel):
    """PostgreSQL + pgvector. With no ``dsn``, an embedded server is started."""

    dsn: SecretStr | None = Field(
        default=None,
        description="postgresql:// URL of an external database; unset = embedded Postgres",
    )
    pool_min_size: int = Field(default=1, ge=1)
    pool_max_size: int = Field(
        default=34, ge=1,
        description="server.threads plus two for the background threads (the lexical index's "
                    "poller, the ingestion worker), so no request thread waits for a connection",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    pool_timeout_s: float = Field(
        default=30.0, gt=0,
        description="how long a request waits for a free pooled connection before a 503",
    )

    @model_validator(mode="after")
    def _pool_sizes(self) -> StoreSettings:
        if self.pool_max_size < self.pool_min_size:
            raise ValueError("store.pool_max_size must be >= store.pool_min_size")
        return self


# Texts per forward pass by default. ONNX runs several forward passes side by side, one per
# core, and with a scale per token a text's int8 vector is the same in any batch: one text a
# pass pads nothing and ingested about 20% more documents a second than 16 (docs/BENCHMARKS.md,
# "int8 with a scale per token").
ONNX_BATCH = 1
TORCH_BATCH = 64


class EmbedderSettings(BaseModel):
    """A sentence-transformers model: the bundled one, a Hugging Face id or a local path.

    ``backend`` picks what runs it: ``onnx`` (the default: the model exported once
    to ONNX and run by ONNX Runtime, on CPU) or ``torch`` (sentence-transformers,
    for GPUs and models ONNX cannot export). ``precision`` applies to either:
    ``bfloat16`` is torch only, ``int8`` (dynamic quantization of the exported
    model) ONNX only; ``auto`` is int8 on ONNX, chosen by retrieval quality and
    speed (docs/BENCHMARKS.md). ``query_precision`` is the queries' (ONNX only):
    ``auto`` is float32, which over int8 documents ranks better than int8 queries.
    With a ``device`` other than ``cpu`` and no backend set, the backend is torch.
    """

    model: str = BUNDLED_EMBEDDER
    backend: Literal["torch", "onnx"] = Field(
        default="onnx", description="onnx: ONNX Runtime on CPU; torch: sentence-transformers "
                                    "(GPUs, models ONNX cannot export)")
    batch_size: int | None = Field(
        default=None, ge=1,
        description="texts per forward pass; unset: 1 on onnx (nothing padded, "
                    "docs/BENCHMARKS.md), 64 on torch")
    device: str | None = Field(default=None, description="cpu, cuda, ...; unset = auto")
    precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        default="auto",
        description="compute precision of the forward pass; torch: auto = bfloat16 on CPUs with "
                    "native bfloat16 (AMX or AVX512-BF16) and on CUDA, else float32 (weights stay "
                    "float32); onnx: auto = int8 (dynamically quantized weights), or float32",
    )
    query_precision: Literal["auto", "float32", "int8"] = Field(
        default="auto",
        description="precision of query embeddings on onnx: auto = float32, which ranks better "
                    "than int8 queries over the same int8 documents (docs/BENCHMARKS.md); torch "
                    "embeds queries as it embeds documents",
    )

    def forward_batch(self) -> int:
        """Texts per forward pass in force (see ``batch_size``)."""
        return self.batch_size or (ONNX_BATCH if self.backend == "onnx" else TORCH_BATCH)

    @model_validator(mode="after")
    def _precision_fits_backend(self) -> EmbedderSettings:
        if "backend" not in self.model_fields_set and self.device not in (None, "cpu"):
            self.backend = "torch"  # a GPU asked for, and the default backend runs on CPUs only
        if self.backend == "torch" and self.precision == "int8":
            raise ValueError("embedder.precision int8 needs embedder.backend onnx; torch runs "
                             "auto, float32 or bfloat16")
        if self.backend == "torch" and self.query_precision == "int8":
            raise ValueError("embedder.query_precision int8 needs embedder.backend onnx")
        if self.backend == "onnx" and self.precision == "bfloat16":
            raise ValueError("embedder.backend onnx runs auto, float32 or int8, not bfloat16")
        if self.backend == "onnx" and self.device not in (None, "cpu"):
            raise ValueError("embedder.backend onnx runs on the CPU: unset embedder.device, or "
                             "use embedder.backend torch")
        return self


class ChunkingSettings(BaseModel):
    """Token-aware splitting, counted with the embedder's own tokenizer."""

    chunk_tokens: int = Field(default=200, ge=16)
    overlap_tokens: int = Field(default=32, ge=0)
    max_file_mb: float = Field(default=50.0, gt=0)
    keep_file_mb: float = Field(
        default=25.0, ge=0,
        description="PDFs up to this size keep their original bytes, so the web page can show "
                    "the cited page itself; 0 keeps none")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunking.overlap_tokens must be smaller than chunking.chunk_tokens")
        return self


# The local server's prompt limit: on two cores it keeps a new question's first token under
# 2 s, and PopQA's plain-RAG accuracy stayed at the whole window's (docs/BENCHMARKS.md).
LOCAL_PROMPT_TOKENS = 448


class LLMSettings(BaseModel):
    """The generator: any OpenAI-compatible chat server.

    With no ``base_url``, Verity starts the local llama.cpp server on the
    bundled GGUF (or ``gguf_path``) on a free loopback port.
    """

    base_url: str | None = Field(default=None, description="e.g. http://vllm:8000/v1")
    api_key: SecretStr = SecretStr("none")
    model: str | None = Field(default=None, description="model name on the server; unset = first listed")
    gguf_path: str = Field(default=BUNDLED_GGUF, description="GGUF for the local server")
    context_tokens: int = Field(default=4096, ge=512,
                                description="the model's context window; sources are packed into it")
    max_tokens: int = Field(default=256, ge=1)
    prompt_tokens: int | None = Field(
        default=None, ge=0,
        description="most tokens of an answer prompt (rules, question and sources together): "
                    "the model reads the whole prompt before its first token, so this bounds "
                    "the time to that token. Unset: 448 on the local llama.cpp server (a CPU "
                    "reads about 240 prompt tokens a second), the context window on a server "
                    "at base_url; 0: the context window (docs/BENCHMARKS.md)")
    tokenizer: Literal["server", "estimate"] = Field(
        default="server",
        description="count prompt tokens with the model's own tokenizer (the local GGUF's "
                    "vocabulary, or the server's tokenize endpoint; falling back to the estimate) "
                    "or always with a conservative estimate (3 bytes a token)")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    timeout_s: float = Field(default=120.0, gt=0)
    threads: int | None = Field(default=None, ge=1)
    quant: Literal["q4_k_m", "q4_0", "q8_0"] = Field(
        default="q4_k_m",
        description="weight format of the bundled model on the local server: q4_k_m as shipped, "
                    "or requantized once into the data directory")
    cpu_backend: str = Field(
        default="auto", min_length=1,
        description="ggml CPU back-ends the local server tries in order, comma-separated: auto (the "
                    "best this CPU supports, then the portable AVX2 one) or names such as zen4, "
                    "haswell")
    startup_timeout_s: float = Field(default=180.0, gt=0)
    concurrency: int | None = Field(
        default=None, ge=1,
        description="answers generated at once; unset: 1 on the local llama.cpp server (it runs "
                    "one at a time), 16 on a server at base_url")
    queue_depth: int = Field(
        default=8, ge=0,
        description="answers waiting for a free slot; past this (or past timeout_s waiting) "
                    "requests get 503 model_busy with Retry-After")
    breaker_failures: int = Field(default=3, ge=1, description="errors in a row that open the circuit")
    breaker_reset_s: float = Field(default=30.0, gt=0, description="how long it stays open")

    def prompt_limit(self) -> int | None:
        """The prompt limit in force (see ``prompt_tokens``); None: the context window."""
        if self.prompt_tokens is None:
            return LOCAL_PROMPT_TOKENS if self.base_url is None else None
        return self.prompt_tokens or None


class RetrievalSettings(BaseModel):
    """How chunks are found for a question."""

    top_k: int = Field(default=5, ge=1, le=100)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "weighted"] = "rrf"
    candidates: int = Field(default=50, ge=1, le=1000, description="per retriever, before fusion")
    rrf_k: int = Field(default=60, ge=1)
    dense_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="weighted fusion only")
    bm25_k1: float = Field(default=BM25_K1, gt=0)
    bm25_b: float = Field(default=BM25_B, ge=0, le=1)
    dense_mode: Literal["float", "binary", "binary-rescore"] = "binary-rescore"
    widen: int = Field(default=0, ge=0, le=5, description="neighbouring chunks added per side")
    oversample: int = Field(default=10, ge=1, description="binary candidates = top_k x oversample")
    min_score: float = Field(
        default=0.15,
        description="if the best dense cosine is below this, nothing relevant was found",
    )
    lexical: Literal["postgres", "tantivy"] = Field(
        default="tantivy",
        description="BM25 engine: tantivy (an index in the data directory kept fresh from "
                    "PostgreSQL; top-k pruning, statistics per collection) or postgres (postings "
                    "table, statistics per caller, cost grows with the collection)",
    )
    dense_index: Literal["memory", "postgres"] = Field(
        default="memory",
        description="binary-rescore engine: memory (each process holds every chunk's sign bits "
                    "and float16 vector, about 1.2 kB of RAM a chunk, kept fresh from PostgreSQL; a "
                    "Hamming scan of all codes, exact rescoring, ACLs as a bitmap) or postgres "
                    "(pgvector's bit HNSW index, an exact scan for selective filters)",
    )


class CragSettings(BaseModel):
    """Corrective RAG: grade retrieval, then refine, re-retrieve or abstain (Yan et al., 2024).

    The evaluator grades a retrieval by its best chunk's relevance score (the
    reranker's when one runs, else the dense cosine similarity). At or above
    ``upper`` the retrieval is *correct*; below ``lower`` it is *incorrect*;
    in between, *ambiguous*. ``verity eval calibrate`` fits both on labelled data.
    """

    enabled: bool = False
    upper: float = Field(default=0.55, description="best score at or above: correct")
    lower: float = Field(default=0.30, description="best score below: incorrect")
    strip_min: float = Field(default=0.30, description="strip relevance needed to keep it")
    answerable_min: float | None = Field(
        default=None,
        description="answerability check: abstain unless the best strip's relevance reaches this "
                    "(unset = off; `verity eval calibrate --abstention` fits it)")
    max_strips: int = Field(default=8, ge=1, le=50)
    # Off by default: on PopQA it made the evaluator a better judge of retrieval (AUC 0.70 ->
    # 0.82) and the kept sources more precise, but the 0.5B model's answers no more accurate
    # (docs/BENCHMARKS.md). Recalibrate upper/lower when turning it on: its scores run lower.
    term_coverage: bool = Field(
        default=False, description="weigh dense relevance by the share of the question's rare "
                                   "terms a chunk or strip contains (names tell namesakes apart)")
    rewrite: bool = Field(default=True, description="rewrite the query before re-retrieving")
    broaden_candidates: int = Field(default=100, ge=1, le=1000)
    broaden_dense_weight: float = Field(default=0.3, ge=0.0, le=1.0,
                                        description="lexical-heavy fusion when re-retrieving")
    siblings: list[str] = Field(default_factory=list,
                                description="other collections searched when re-retrieving")
    connectors: list[str] = Field(default_factory=list,
                                  description="external search connectors, e.g. replay:PATH")

    @model_validator(mode="after")
    def _ordered(self) -> CragSettings:
        if self.lower > self.upper:
            raise ValueError("crag.lower must not exceed crag.upper")
        return self


class PiiSettings(BaseModel):
    """Private-data protection: mask personal data before it reaches the model."""

    collections: list[str] = Field(default_factory=list,
                                   description="collections whose text is masked")
    all: bool = Field(default=False, description="mask text of every collection")

    def enabled_for(self, collection: str) -> bool:
        return self.all or collection in self.collections


class FaissSettings(BaseModel):
    """The in-memory FAISS accelerator: binary candidates, int8 rescoring.

    See verity/backends/stores/faiss_index.py.
    """

    hnsw_threshold: int = Field(
        default=2_000_000, ge=0,
        description="collections with at least this many chunks get a binary HNSW index; smaller ones "
                    "a flat (exhaustive Hamming) index",
    )
    hnsw_m: int = Field(default=16, ge=4, le=128, description="HNSW graph degree")
    ef_search: int = Field(default=64, ge=1, description="HNSW search breadth; at least the candidates")
    float_shortlist: int = Field(
        default=4, ge=1, description="with float rescoring: int8 winners per hit rescored with halfvec",
    )
    stream_batch: int = Field(default=5000, ge=100, description="rows per fetch when reading Postgres")


RerankKind = Literal["none", "cross-encoder", "remote", "llm-judge"]


class RerankSettings(BaseModel):
    """An optional second stage that re-scores the fused candidates.

    ``kind`` picks the backend: ``cross-encoder`` (sentence-transformers, in
    process; ``model`` is a Hugging Face id or a local path, by default the model
    ``verity tune reranker`` saved under ``DATA_DIR/models/reranker``), ``remote``
    (a vLLM, TEI or Cohere-style ``/rerank`` endpoint at ``url``) or ``llm-judge``
    (an OpenAI-compatible chat server at ``url``, by default the generator's).
    """

    kind: RerankKind = "none"
    model: str | None = Field(
        default=None,
        description="cross-encoder: HF id or path (unset = DATA_DIR/models/reranker); "
                    "remote / llm-judge: model name on the server",
    )
    url: str | None = Field(default=None, description="remote: /rerank endpoint; llm-judge: /v1 URL")
    api_key: SecretStr = SecretStr("none")
    top_n: int = Field(default=30, ge=1, le=200, description="fused candidates to rerank")
    fusion: Literal["replace", "rrf", "interpolate"] = Field(
        default="replace",
        description="replace: keep the reranker's order; rrf: reciprocal rank fusion of the "
                    "reranker's and the first stage's orders; interpolate: weight x the "
                    "reranker's score + (1 - weight) x the first stage's, both min-max normalised",
    )
    weight: float = Field(default=0.5, ge=0.0, le=1.0,
                          description="interpolate: the reranker's share of the final score")
    batch_size: int = Field(default=16, ge=1, description="pairs per forward pass or request wave")
    max_length: int | None = Field(
        default=None, ge=16, description="cross-encoder tokens per pair; unset = the model's own")
    timeout_s: float = Field(default=30.0, gt=0, description="per request to a remote server")
    device: str | None = Field(default=None, description="cross-encoder: cpu, cuda, ...; unset = auto")

    @model_validator(mode="after")
    def _remote_needs_url(self) -> RerankSettings:
        if self.kind == "remote" and not self.url:
            raise ValueError("rerank.url is required when rerank.kind is 'remote'")
        return self


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    auth: bool = Field(default=True, description="require API keys (off only in --dev)")
    max_body_mb: float = Field(default=1.0, gt=0, description="JSON request bodies")
    max_upload_mb: float = Field(default=50.0, gt=0, description="document uploads")
    rate_limit_per_minute: int = Field(default=600, ge=0, description="per API key; 0 = off")
    worker: bool = Field(default=True, description="run an ingestion worker thread in verity serve")
    metrics: bool = Field(default=True, description="serve Prometheus metrics at /metrics")
    threads: int = Field(
        default=32, ge=1,
        description="threads for blocking requests (search, answers, uploads); size "
                    "store.pool_max_size to match")
    otel: bool = Field(
        default=False, description="OpenTelemetry tracing, if its packages are installed")
    health_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="also answer GET /healthz on this port, from a thread of its own, so a "
                    "liveness probe does not wait behind the API's connections under load; it "
                    "answers 503 when the API's event loop has not run for 5 s")
    keep_alive_s: int = Field(
        default=75, ge=1,
        description="how long an idle client connection is kept open: longer than clients' "
                    "and proxies' own idle limits, so none sends a request on a connection "
                    "the server is closing")

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        if self.health_port is not None and self.health_port == self.port:
            raise ValueError("server.health_port must differ from server.port")
        return self


class WorkerSettings(BaseModel):
    """The ingestion worker, in ``verity serve`` (a thread) or ``verity worker`` (a process)."""

    poll_interval_s: float = Field(default=1.0, gt=0, description="wait between empty polls")
    stale_after_s: float = Field(
        default=600.0, gt=0,
        description="a running job with no progress for this long is given to another worker")
    max_attempts: int = Field(default=3, ge=1, description="claims of one job before it fails")


class EvalSettings(BaseModel):
    """Where ``verity eval`` writes its reports and the service finds them."""

    reports_dir: Path | None = Field(
        default=None,
        description="folder of saved evaluation reports (default DATA_DIR/reports): the parent "
                    "of `verity eval --out` when --out is not given, browsed by the web page")
    serve_reports: bool = Field(
        default=True,
        description="verity serve lists and shows the reports to admin keys (/v1/eval); reports "
                    "are the server's, not a tenant's: turn off where tenant admins must not "
                    "see them")

    @field_validator("reports_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()


class Settings(BaseSettings):
    """Everything Verity can be told. See docs/configuration.md for the table."""

    model_config = SettingsConfigDict(
        env_prefix="VERITY_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    collection: str = Field(default="default", description="collection used when none is named")
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="serve/worker logs; auto: text on a terminal, JSON lines otherwise")
    store: StoreSettings = StoreSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    llm: LLMSettings = LLMSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    crag: CragSettings = CragSettings()
    pii: PiiSettings = PiiSettings()


    faiss: FaissSettings = FaissSettings()


    rerank: RerankSettings = RerankSettings()
    server: ServerSettings = ServerSettings()
    worker: WorkerSettings = WorkerSettings()
    eval: EvalSettings = EvalSettings()

    @property
    def reports_dir(self) -> Path:
        """The folder of saved evaluation reports: ``eval.reports_dir`` or ``DATA_DIR/reports``."""
        return self.eval.reports_dir or self.data_dir / "reports"

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        return validate_collection_name(value)


def validate_collection_name(name: str) -> str:
    """Collection names are 1-64 characters of letters, digits, ``-``, ``_`` and ``.``."""
    import re

    from verity.core.errors import ConfigError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return name
