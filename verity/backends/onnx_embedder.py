"""Embeddings with ONNX Runtime: the sentence-transformers model exported once, run on CPU.

The model (the bundled one, a local path, or a Hugging Face id already in the
local cache) is exported with ``torch.onnx.export``, pooling and all, and with
``precision`` int8 its MatMul weights are quantized (signed 8-bit per output
channel) and their inputs at run time, each token with a scale of its own
(``onnx_int8``). The result is cached under
``DATA_DIR/models/onnx``, keyed by a hash of the model's files and of the export
settings, so a changed model or setting makes a new file and an unchanged one
is never exported twice. Each file is written to a temporary name and renamed,
so a killed export never leaves half a model; a sidecar records its SHA-256,
and a file that no longer matches it is exported again.

A call with several batches (ingestion's) runs them side by side, one batch per
core, each on a session of its own with one thread: ONNX Runtime's threads
share one batch's work less well than cores share whole batches (SciFact
abstracts: 45.5 a second against 38.8 on two cores, docs/BENCHMARKS.md).
A single batch, and so every query, runs on the session with a thread per core.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verity.backends.models import resolve_embedder, sha256_file
from verity.backends.onnx_int8 import quantize_per_token
from verity.core.errors import ConfigError, EmbedderError
from verity.core.settings import EmbedderSettings

log = logging.getLogger(__name__)

# Bump when the exported graph or its quantization changes: older cached files are not reused.
# 2: attention exported as plain operators, not PyTorch's fused kernel.
# 3: int8 activations quantized per token (onnx_int8), not per batch.
EXPORT_FORMAT = 3
OPSET = 17


@dataclass(frozen=True)
class ExportedModel:
    """A cached ONNX file and what running it needs besides the tokenizer."""

    path: Path
    source: Path
    dim: int
    max_seq_length: int
    prompt: str
    inputs: tuple[str, ...]


class OnnxEmbedder:
    """The ``Embedder`` protocol over an ONNX export of a sentence-transformers model.

    Vectors match sentence-transformers' to a cosine similarity above 0.9999 in
    float32 and about 0.999 with int8 weights. The constructor is cheap; the
    export (first time only) and the session load happen on first use or in
    :meth:`warm_up`.

    Example:
        >>> embedder = OnnxEmbedder(EmbedderSettings(backend="onnx"), data_dir=Path("data"))
        >>> embedder.embed_query("how do I configure the database?").shape
        (384,)
    """

    def __init__(self, settings: EmbedderSettings, *, data_dir: Path) -> None:
        self._settings = settings
        self._data_dir = data_dir
        self.name = settings.model.removeprefix("bundled:")
        self._exported: ExportedModel | None = None
        self._session: Any = None
        self._lanes: queue.SimpleQueue[Any] | None = None  # one-thread sessions, for batches
        self._cores = len(os.sched_getaffinity(0))  # the cores this process may run on
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._use = threading.Lock()
        # Queries in another precision than documents run their own export of the model.
        self._queries: OnnxEmbedder | None = None
        if self.query_precision != self.precision:
            self._queries = OnnxEmbedder(
                settings.model_copy(update={"precision": self.query_precision,
                                            "query_precision": self.query_precision}),
                data_dir=data_dir)

    def warm_up(self) -> None:
        """Export the model if no valid export is cached, then load it.

        Raises:
            ConfigError: the model's files cannot be found locally.
            EmbedderError: the model cannot be exported or loaded.
        """
        if self._queries is not None:
            self._queries.warm_up()
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            exported = export_model(self._settings, data_dir=self._data_dir)
            self._tokenizer = _load_tokenizer(exported.source)
            self._session = _open_session(exported.path, threads=self._cores)
            self._exported = exported

    @property
    def settings(self) -> EmbedderSettings:
        return self._settings

    @property
    def data_dir(self) -> Path:
        """Where exports are cached (under ``models/onnx``)."""
        return self._data_dir

    @property
    def precision(self) -> str:
        """The precision of the exported weights: ``int8`` (``auto`` too) or ``float32``."""
        return "int8" if quantized(self._settings) else "float32"

    @property
    def query_precision(self) -> str:
        """The precision queries are embedded in: ``float32`` unless set to ``int8``.

        float32 queries over int8 documents ranked better than int8 queries on SciFact
        (hybrid nDCG@10 +0.0046, paired bootstrap p = 0.03; docs/BENCHMARKS.md).
        """
        return "int8" if self._settings.query_precision == "int8" else "float32"

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def artifact(self) -> Path:
        """The cached ONNX file this embedder runs."""
        return self._model.path

    @property
    def dim(self) -> int:
        return self._model.dim

    @property
    def max_tokens(self) -> int:
        return self._model.max_seq_length

    @property
    def tokenizer(self) -> Any:
        self.warm_up()
        return self._tokenizer

    @property
    def _model(self) -> ExportedModel:
        self.warm_up()
        assert self._exported is not None
        return self._exported

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(list(texts))

    def embed_query(self, text: str) -> np.ndarray:
        if self._queries is not None:
            return self._queries.embed_query(text)
        vector: np.ndarray = self._encode([text])[0]
        return vector

    def count_tokens(self, text: str) -> int:
        tokenizer = self.tokenizer
        with self._use:
            return len(tokenizer.encode(text, add_special_tokens=False))

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Longest texts first, as sentence-transformers does, so each batch pads little."""
        model = self._model
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), model.dim), dtype=np.float32)
        step = self._settings.forward_batch()
        batches = [order[start:start + step] for start in range(0, len(texts), step)]
        lanes = self._batch_lanes() if len(batches) > 1 else None

        def encode(batch: np.ndarray) -> None:
            out[batch] = self._run([model.prompt + texts[i] for i in batch], lanes)

        if lanes is None:
            for batch in batches:
                encode(batch)
        else:
            with ThreadPoolExecutor(self._cores, thread_name_prefix="onnx-lane") as pool:
                list(pool.map(encode, batches))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        normalised: np.ndarray = out / np.maximum(norms, 1e-12)
        return normalised

    def _batch_lanes(self) -> queue.SimpleQueue[Any] | None:
        """One single-threaded session per core (opened on first use); None on one core."""
        if self._cores < 2:
            return None
        path = self._model.path
        with self._lock:
            if self._lanes is None:
                lanes: queue.SimpleQueue[Any] = queue.SimpleQueue()
                for _ in range(self._cores):
                    lanes.put(_open_session(path, threads=1))
                self._lanes = lanes
        return self._lanes

    def _run(self, texts: list[str], lanes: queue.SimpleQueue[Any] | None = None) -> np.ndarray:
        model = self._model
        try:
            # Fast tokenizers are not thread-safe ("Already borrowed"): one encode at a time.
            with self._use:
                encoded = self._tokenizer(texts, padding=True, truncation=True,
                                          max_length=model.max_seq_length, return_tensors="np")
            feeds = {name: np.asarray(encoded[name], dtype=np.int64) for name in model.inputs}
            session = lanes.get() if lanes is not None else self._session
            try:
                vectors: np.ndarray = np.asarray(session.run(None, feeds)[0], dtype=np.float32)
            finally:
                if lanes is not None:
                    lanes.put(session)
            return vectors
        except Exception as e:
            raise EmbedderError(f"embedding failed: {type(e).__name__}: {e}") from e


def export_model(settings: EmbedderSettings, *, data_dir: Path) -> ExportedModel:
    """The cached export for these settings, exporting it first if it is missing or corrupt.

    Raises:
        ConfigError: the model's files cannot be found locally.
        EmbedderError: the model cannot be exported.
    """
    source = local_model_dir(settings.model)
    quantize = quantized(settings)
    reduce_range = quantize and not _has_vnni()
    key = export_key(source, quantize=quantize, reduce_range=reduce_range)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", settings.model.removeprefix("bundled:"))[-48:]
    target = data_dir / "models" / "onnx" / f"{slug}-{'int8' if quantize else 'float32'}-{key[:16]}"
    cached = _read_cached(target, source=source)
    if cached is not None:
        return cached
    log.info("exporting embedder %s to ONNX (%s) at %s", settings.model,
             "int8" if quantize else "float32", target.with_suffix(".onnx"))
    meta = _export(source, target.with_suffix(".onnx"), quantize=quantize, reduce_range=reduce_range)
    _write_atomically(target.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    cached = _read_cached(target, source=source)
    if cached is None:
        raise EmbedderError(f"the ONNX export at {target.with_suffix('.onnx')} does not verify: "
                            "check the disk under the data directory, then retry")
    return cached


def quantized(settings: EmbedderSettings) -> bool:
    """Whether these settings run int8 weights: ``int8``, or ``auto``, which means int8 here.

    Measured on SciFact and SQuAD, int8 vectors rank as float32 ones do and embed
    about twice as fast (docs/BENCHMARKS.md, "Choosing the embedder default").
    """
    return settings.precision in ("int8", "auto")


def local_model_dir(model: str) -> Path:
    """The folder holding the model's files: bundled, a local path, or the local Hugging Face cache.

    Raises:
        ConfigError: the model is not on this machine (the ONNX export needs its files).
    """
    resolved = Path(resolve_embedder(model)).expanduser()
    if resolved.is_dir():
        return resolved
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=str(model), local_files_only=True))
    except Exception as e:
        raise ConfigError(
            f"embedding model {model!r} is not on this machine ({type(e).__name__}); the onnx "
            "backend exports from local files: set VERITY_EMBEDDER__MODEL to a local folder, "
            "or use VERITY_EMBEDDER__BACKEND=torch"
        ) from e


def export_key(source: Path, *, quantize: bool, reduce_range: bool) -> str:
    """A hash of the model's files and of everything that shapes the exported graph."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue
        digest.update(f"{relative}\0{sha256_file(path)}\0".encode())
    settings = {"format": EXPORT_FORMAT, "opset": OPSET, "quantize": quantize,
                "reduce_range": reduce_range}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _read_cached(target: Path, *, source: Path) -> ExportedModel | None:
    """The cached export at ``target`` (``.onnx`` + ``.json``), or None if missing or corrupt."""
    model, sidecar = target.with_suffix(".onnx"), target.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        if not model.is_file() or sha256_file(model) != meta["sha256"]:
            log.warning("cached ONNX export %s is missing or corrupt; exporting again", model)
            return None
        return ExportedModel(path=model, source=source, dim=int(meta["dim"]),
                             max_seq_length=int(meta["max_seq_length"]), prompt=str(meta["prompt"]),
                             inputs=tuple(meta["inputs"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _export(source: Path, target: Path, *, quantize: bool, reduce_range: bool) -> dict[str, Any]:
    """Export (and maybe quantize) the model to ``target``; returns the sidecar's content."""
    target.parent.mkdir(parents=True, exist_ok=True)
    float_path = target.with_name(f".{target.name}.{os.getpid()}.float.partial")
    final_path = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        meta = _export_float(source, float_path)
        if quantize:
            quantize_per_token(float_path, final_path, reduce_range=reduce_range)
        else:
            float_path.replace(final_path)
        meta["sha256"] = sha256_file(final_path)
        final_path.replace(target)
    except EmbedderError:
        raise
    except Exception as e:
        raise EmbedderError(
            f"could not export embedding model {source} to ONNX ({type(e).__name__}: {e}); use "
            "VERITY_EMBEDDER__BACKEND=torch for this model"
        ) from e
    finally:
        float_path.unlink(missing_ok=True)
        final_path.unlink(missing_ok=True)
    return meta


def _export_float(source: Path, path: Path) -> dict[str, Any]:
    """Trace the whole sentence-transformers model (pooling included) into a float32 ONNX file."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the service's log is JSON lines, one per record
    # Attention written out as plain operators ("eager"): traced from PyTorch's fused
    # scaled_dot_product_attention, the int8 model embedded about a quarter fewer texts a
    # second on the CPU (docs/BENCHMARKS.md, "Ingestion").
    st = SentenceTransformer(str(source), device="cpu",
                             model_kwargs={"attn_implementation": "eager"}).eval()
    inputs = tuple(n for n in st.tokenizer.model_input_names
                   if n in ("input_ids", "attention_mask", "token_type_ids"))
    # Two texts of different lengths, so the traced graph handles padding.
    sample = st.tokenizer(["an example", "a somewhat longer example sentence"], padding=True,
                          return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    # The tracer warns about every shape-dependent branch; the dynamic axes cover them.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _pooled_module(st, inputs), tuple(sample[n] for n in inputs), str(path),
            input_names=list(inputs), output_names=["sentence_embedding"],
            dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    prompt = st.prompts.get(st.default_prompt_name, "") if st.default_prompt_name else ""
    dim = (getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)()
    if dim is None:
        raise EmbedderError(f"model {source} does not report its embedding dimension")
    max_length = st.max_seq_length or st.tokenizer.model_max_length
    return {"dim": int(dim), "max_seq_length": int(max_length), "prompt": prompt,
            "inputs": list(inputs)}


def _pooled_module(st: Any, inputs: tuple[str, ...]) -> Any:
    """The model as a module of positional tensors, which ``torch.onnx.export`` traces."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, *tensors: Any) -> Any:
            return self.st(dict(zip(inputs, tensors, strict=True)))["sentence_embedding"]

    return Pooled().eval()



def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _load_tokenizer(source: Path) -> Any:
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        # The splitter measures whole sections before cutting them; do not warn about each.
        hf_logging.set_verbosity_error()
        return AutoTokenizer.from_pretrained(str(source), use_fast=True)
    except Exception as e:
        raise EmbedderError(f"could not load the tokenizer of {source} ({type(e).__name__}); "
                            "check the model folder") from e


def _open_session(path: Path, *, threads: int) -> Any:
    """An ONNX Runtime CPU session running each model on ``threads`` threads."""
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The pool's threads spin while a run lasts (a query takes 4 to 5 ms with them, 7 on
        # one thread) but stop when it returns: spinning between the runs of concurrent
        # requests took half the service's CPU under load (docs/BENCHMARKS.md, "Load").
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise EmbedderError(f"ONNX Runtime cannot load {path} ({type(e).__name__}); delete it to "
                            "export again") from e


def _has_vnni() -> bool:
    """Whether the CPU has 8-bit dot-product instructions (VNNI or AMX).

    Without them, ONNX Runtime's u8 x s8 kernels can saturate; the weights are
    then quantized to 7 bits (``reduce_range``).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
