"""Sentence-transformers embeddings."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from verity.backends.models import resolve_embedder
from verity.backends.onnx_embedder import OnnxEmbedder
from verity.core.errors import ConfigError, EmbedderError
from verity.core.settings import EmbedderSettings


def build_embedder(settings: EmbedderSettings, *, data_dir: Path) -> LocalEmbedder:
    """The embedder ``settings.backend`` names; ONNX exports are cached under ``data_dir``.

    Raises:
        ConfigError: the backend is unknown.
    """
    match settings.backend:
        case "torch":
            return SentenceTransformerEmbedder(settings)
        case "onnx":
            return OnnxEmbedder(settings, data_dir=data_dir)
        case other:
            raise ConfigError(f"unknown embedder backend {other!r}: set VERITY_EMBEDDER__BACKEND "
                              "to torch or onnx")


class SentenceTransformerEmbedder:
    """The ``Embedder`` protocol over a sentence-transformers model.

    The constructor is cheap; the model loads on first use or in :meth:`warm_up`.
    The weights stay float32; with ``precision`` bfloat16 (by default where the
    hardware computes it natively) the forward pass runs under autocast, which
    roughly halves the time per batch on CPUs with AMX. The vectors differ from
    float32 ones by a cosine distance of about 1e-5.

    Example:
        >>> embedder = SentenceTransformerEmbedder(EmbedderSettings())
        >>> embedder.embed_query("how do I configure the database?").shape
        (384,)
    """

    def __init__(self, settings: EmbedderSettings) -> None:
        self._settings = settings
        self.name = settings.model.removeprefix("bundled:")
        self._model: Any = None
        self._bfloat16 = False
        self._lock = threading.Lock()
        self._use = threading.Lock()

    def warm_up(self) -> None:
        """Load the model now.

        Raises:
            EmbedderError: it cannot be found or loaded.
        """
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            path = resolve_embedder(self._settings.model)
            try:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                # The splitter measures whole sections with this tokenizer before cutting them
                # to size; transformers warns about every one longer than the model's limit.
                hf_logging.set_verbosity_error()
                model = SentenceTransformer(path, device=self._settings.device)
            except Exception as e:
                raise EmbedderError(
                    f"could not load embedding model {self._settings.model!r} "
                    f"({type(e).__name__}); set VERITY_EMBEDDER__MODEL to a local path or a "
                    "Hugging Face id reachable from here"
                ) from e
            self._bfloat16 = use_bfloat16(self._settings.precision, device=str(model.device))
            self._model = model

    @property
    def settings(self) -> EmbedderSettings:
        return self._settings

    @property
    def precision(self) -> str:
        """The precision the forward pass runs in: ``float32`` or ``bfloat16``."""
        self.warm_up()
        return "bfloat16" if self._bfloat16 else "float32"

    @property
    def query_precision(self) -> str:
        """Queries are embedded as documents are."""
        return self.precision

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        self.warm_up()
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:
            raise EmbedderError(f"model {self.name} does not report its embedding dimension")
        return int(dim)

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(list(texts))

    def embed_query(self, text: str) -> np.ndarray:
        vector: npt.NDArray[np.float32] = self._encode([text])[0]
        return vector

    def count_tokens(self, text: str) -> int:
        with self._use:
            return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self.model
        try:
            # Fast tokenizers are not thread-safe ("Already borrowed"): one encode at a time.
            # Each call already uses every core through torch's intra-op threads.
            with self._use, self._autocast(model):
                vectors = model.encode(
                    texts,
                    batch_size=self._settings.forward_batch(),
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        except Exception as e:
            raise EmbedderError(f"the embedding model failed ({type(e).__name__}); retry, and if "
                                "it persists, the server log has the details") from e
        return np.asarray(vectors, dtype=np.float32)

    @contextlib.contextmanager
    def _autocast(self, model: Any) -> Iterator[None]:
        if not self._bfloat16:
            yield
            return
        import torch

        with torch.autocast(model.device.type, dtype=torch.bfloat16):
            yield


def use_bfloat16(precision: str, *, device: str) -> bool:
    """Whether the forward pass should run in bfloat16 (``precision`` is a settings value).

    ``auto`` picks bfloat16 only where the hardware computes it natively: a CPU
    with AMX or AVX512-BF16, or a CUDA device that supports it. Elsewhere
    bfloat16 is emulated and slower than float32.
    """
    if precision != "auto":
        return precision == "bfloat16"
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    if device.startswith("cpu"):
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


LocalEmbedder: TypeAlias = SentenceTransformerEmbedder | OnnxEmbedder
"""An embedder running in this process, with its tokenizer (what ingestion and the service use)."""
