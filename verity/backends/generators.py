"""Generation through any OpenAI-compatible chat server (llama.cpp, vLLM, ...)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import openai

from verity.core.errors import GenerationError
from verity.core.protocols import Generation
from verity.core.settings import LLMSettings

log = logging.getLogger(__name__)

# What a stream can raise while it is read: the client's own errors, the transport's (a server
# that dies mid-response) and a garbled event (JSON that does not parse).
_STREAM_ERRORS = (openai.OpenAIError, httpx.HTTPError, ValueError)


class OpenAIChatGenerator:
    """The ``Generator`` protocol over the ``openai`` client.

    Example:
        >>> gen = OpenAIChatGenerator(LLMSettings(base_url="http://127.0.0.1:8080/v1"))
        >>> gen.generate([{"role": "user", "content": "Say hi"}]).text
    """

    def __init__(self, settings: LLMSettings, *, base_url: str | None = None) -> None:
        url = base_url or settings.base_url
        if not url:
            raise GenerationError("no model server URL: set VERITY_LLM__BASE_URL")
        self._settings = settings
        self.base_url = url.rstrip("/")
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=settings.api_key.get_secret_value(),
            timeout=settings.timeout_s,
            max_retries=0,
        )
        self._model = settings.model

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._first_model()
        return self._model

    def _first_model(self) -> str:
        try:
            models = self._client.models.list().data
        except openai.OpenAIError as e:
            log.warning("model server at %s is unreachable: %s", self.base_url, e)
            raise GenerationError("the model server is unreachable; check VERITY_LLM__BASE_URL "
                                  "and that the server is running") from e
        if not models:
            log.warning("model server at %s lists no models", self.base_url)
            raise GenerationError("the model server lists no models; set VERITY_LLM__MODEL or "
                                  "load a model into the server")
        return str(models[0].id)

    def generate(
        self, messages: Sequence[dict[str, str]], *, max_tokens: int | None = None
    ) -> Generation:
        try:
            response = self._client.chat.completions.create(**self._request(messages, max_tokens))
        except openai.APITimeoutError as e:
            raise GenerationError(f"model server timed out after {self._settings.timeout_s}s") from e
        except openai.OpenAIError as e:
            log.warning("model server at %s failed: %r", self.base_url, e)
            raise GenerationError("the model server failed; the reason is in the service log") from e
        choice = response.choices[0]
        usage = response.usage
        return Generation(
            text=(choice.message.content or "").strip(),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            model=response.model or self.model,
        )

    def stream(
        self, messages: Sequence[dict[str, str]], *, max_tokens: int | None = None
    ) -> Iterator[str]:
        try:
            # Closed on leaving, also when the reader stops early: the server then stops generating.
            with self._client.chat.completions.create(
                **self._request(messages, max_tokens), stream=True
            ) as events:
                for event in events:
                    if event.choices and event.choices[0].delta.content:
                        yield event.choices[0].delta.content
        except _STREAM_ERRORS as e:
            log.warning("model server at %s failed mid-stream: %r", self.base_url, e)
            raise GenerationError(
                "the model server failed mid-stream; the reason is in the service log") from e

    def health(self) -> bool:
        """Whether the server answers ``GET /models``."""
        try:
            self._client.with_options(timeout=5.0).models.list()
        except openai.OpenAIError:
            return False
        return True

    def _request(self, messages: Sequence[dict[str, str]], max_tokens: int | None) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": max_tokens or self._settings.max_tokens,
            "temperature": self._settings.temperature,
        }


class CircuitBreaker:
    """A ``Generator`` that stops calling a failing model server for a while.

    After ``failures`` consecutive errors the circuit opens: calls fail at once
    with ``GenerationError`` (so answers degrade to sources without waiting for
    timeouts) until ``reset_s`` seconds pass; then one trial call is let through.

    Example:
        >>> gen = CircuitBreaker(OpenAIChatGenerator(settings), failures=3, reset_s=30)
    """

    def __init__(self, inner: OpenAIChatGenerator, *, failures: int = 3, reset_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def base_url(self) -> str:
        return self.inner.base_url

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None and self._clock() - self._opened_at < self._reset_s

    def generate(self, messages: Sequence[dict[str, str]], *,
                 max_tokens: int | None = None) -> Generation:
        self._admit()
        try:
            result = self.inner.generate(messages, max_tokens=max_tokens)
        except GenerationError:
            self._failed()
            raise
        self._succeeded()
        return result

    def stream(self, messages: Sequence[dict[str, str]], *,
               max_tokens: int | None = None) -> Iterator[str]:
        self._admit()
        try:
            yield from self.inner.stream(messages, max_tokens=max_tokens)
        except GenerationError:
            self._failed()
            raise
        self._succeeded()

    def health(self) -> bool:
        return not self.is_open and self.inner.health()

    def _admit(self) -> None:
        if self.is_open:
            raise GenerationError("the model server is failing; answers carry sources only "
                                  "until it recovers")

    def _failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self._threshold:
                self._opened_at = self._clock()

    def _succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
