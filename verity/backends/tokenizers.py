"""Token counters for context packing: the model's own tokenizer where it can be had.

- :class:`GgufTokenCounter` reads the vocabulary of the GGUF file the local llama.cpp server
  serves and tokenizes in-process: the same tokens as the server's, without an HTTP round
  trip per source (about a millisecond for a 200-token source, against tens of milliseconds).
- :class:`ServerTokenCounter` asks a remote server's tokenize endpoint (vLLM, llama.cpp).
- :class:`EstimateCounter` is the conservative fallback both use when their tokenizer fails.

All three keep the :class:`~verity.core.protocols.TokenCounter` contract: ``count`` never
raises, and ``name`` says which tokenizer gave the last count.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from verity.backends.models import resolve_gguf
from verity.core.protocols import TokenCounter
from verity.core.settings import LLMSettings

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30.0  # a failed tokenizer is tried again after this long, not given up for good


class EstimateCounter:
    """A conservative estimate for servers whose tokenizer cannot be asked.

    BPE tokenizers give about 4 characters per English token; counting 3 (and
    at least one per word) over-estimates, so a packed prompt stays inside the
    window.

    Example:
        >>> EstimateCounter().count("How many tokens is this?")
        8
    """

    name = "estimate"

    def __init__(self, chars_per_token: float = 3.0) -> None:
        self.chars_per_token = chars_per_token

    def count(self, text: str) -> int:
        return max(math.ceil(len(text.encode()) / self.chars_per_token), len(text.split()))


class _Fallback:
    """Counting through a tokenizer that may fail: estimate meanwhile, try again later.

    One failure used to disable the tokenizer for the life of the process; now the
    estimate stands in for :data:`RETRY_AFTER_S` seconds and then the tokenizer is
    asked again. Thread-safe: several requests pack at once.
    """

    def __init__(self, *, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._what = what
        self._clock = clock
        self._estimate = EstimateCounter()
        self._lock = threading.Lock()
        self._retry_at = 0.0

    def count(self, text: str, exact: Callable[[str], int], errors: tuple[type[Exception], ...],
              ) -> tuple[int, bool]:
        """``(tokens, exact)``: the tokenizer's count, or the estimate while it is failing."""
        if self._clock() < self._retry_at:
            return self._estimate.count(text), False
        try:
            return exact(text), True
        except errors as e:
            with self._lock:
                self._retry_at = self._clock() + RETRY_AFTER_S
            log.warning("%s failed (%s); estimating token counts for %.0f s",
                        self._what, e, RETRY_AFTER_S)
            return self._estimate.count(text), False


class GgufTokenCounter:
    """The GGUF model's own tokenizer, in-process (llama.cpp's, vocabulary only).

    Loads only the vocabulary (under a second, a few MB), on first use.

    Example:
        >>> counter = GgufTokenCounter(Path("model.gguf"))
        >>> counter.count("The navy issued lemon juice to every sailor.")
        10
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.name = "gguf"
        self._vocab: Any = None
        self._lock = threading.Lock()
        self._fallback = _Fallback(what=f"tokenizer of {path.name}", clock=clock)

    def count(self, text: str) -> int:
        n, exact = self._fallback.count(text, self._tokens, (OSError, ValueError, RuntimeError))
        self.name = "gguf" if exact else EstimateCounter.name
        return n

    def _tokens(self, text: str) -> int:
        with self._lock:  # llama.cpp's tokenizer keeps a cache inside the vocabulary
            if self._vocab is None:
                self._vocab = _load_vocab(self.path)
            # As llama_cpp.server counts: special tokens parsed, no BOS added.
            return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def _load_vocab(path: Path) -> Any:
    from llama_cpp import Llama

    try:
        return Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"cannot read the vocabulary of {path}: {e}") from e


class ServerTokenCounter:
    """The model server's own tokenizer over HTTP, with the estimate as fallback.

    Understands ``llama_cpp.server`` (``POST /extras/tokenize/count``), the
    llama.cpp server (``POST /tokenize``, ``{"content"}``) and vLLM
    (``POST /tokenize``, ``{"prompt"}``). The first endpoint that answers is
    kept. While none answers, or one fails, counts come from
    :class:`EstimateCounter` and ``name`` says so; the server is asked again
    after :data:`RETRY_AFTER_S` seconds.

    Example:
        >>> ServerTokenCounter("http://127.0.0.1:8080/v1", model="qwen").count("hi there")
        2
    """

    _ERRORS = (httpx.HTTPError, ValueError, KeyError, TypeError)

    def __init__(self, base_url: str, *, model: str | None = None, timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = re.sub(r"/v1/?$", "", base_url.rstrip("/"))
        self.model = model
        self._timeout = timeout_s
        self._ask: tuple[str, Callable[[str], int]] | None = None
        self._lock = threading.Lock()
        self._fallback = _Fallback(what=f"tokenizer endpoint at {self.root}", clock=clock)
        self.name = "server"

    def count(self, text: str) -> int:
        n, exact = self._fallback.count(text, self._exact, self._ERRORS)
        self.name = self._ask[0] if exact and self._ask else EstimateCounter.name
        return n

    def _exact(self, text: str) -> int:
        ask = self._ask
        if ask is None:
            with self._lock:
                ask = self._ask = self._ask or self._discover(text)
        return ask[1](text)

    def _discover(self, probe: str) -> tuple[str, Callable[[str], int]]:
        endpoints = (("llama_cpp.server", self._llama_cpp_python), ("llama.cpp", self._llama_cpp),
                     ("vllm", self._vllm))
        for name, ask in endpoints:
            try:
                ask(probe)
            except self._ERRORS:
                continue
            return name, ask
        raise ValueError("no tokenize endpoint answered")

    def _post(self, path: str, body: dict[str, object]) -> dict[str, Any]:
        response = httpx.post(f"{self.root}{path}", json=body, timeout=self._timeout)
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError("tokenize endpoint returned no object")
        return data

    def _llama_cpp_python(self, text: str) -> int:
        return int(self._post("/extras/tokenize/count", {"input": text})["count"])

    def _llama_cpp(self, text: str) -> int:
        tokens = self._post("/tokenize", {"content": text})["tokens"]
        if not isinstance(tokens, list):
            raise ValueError("llama.cpp /tokenize returned no token list")
        return len(tokens)

    def _vllm(self, text: str) -> int:
        body: dict[str, object] = {"prompt": text, "add_special_tokens": False}
        if self.model:
            body["model"] = self.model
        return int(self._post("/tokenize", body)["count"])


def build_token_counter(settings: LLMSettings, *, base_url: str | None, local: bool,
                        data_dir: Path) -> TokenCounter:
    """The counter for the configured generator.

    Args:
        settings: the generator's settings (``tokenizer`` chooses exact or estimated counts).
        base_url: the generator's server, or None when there is no generator.
        local: whether that server is the local llama.cpp child serving ``settings.gguf_path``,
            whose vocabulary can then be read in-process.
        data_dir: where the bundled GGUF is assembled.
    """
    if base_url is None or settings.tokenizer == "estimate":
        return EstimateCounter()
    if local:
        return GgufTokenCounter(resolve_gguf(settings.gguf_path, data_dir=data_dir))
    return ServerTokenCounter(base_url, model=settings.model or None)
