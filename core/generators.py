"""Generation through any OpenAI-compatible chat server (llama.cpp, vLLM, ...)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import openai

from core.errors import GenerationError
from core.protocols import Generation
from core.settings import LLMSettings


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
            raise GenerationError(f"model server at {self.base_url} is unreachable") from e
        if not models:
            raise GenerationError(f"model server at {self.base_url} lists no models")
        return str(models[0].id)

    def generate(
        self, messages: Sequence[dict[str, str]], *, max_tokens: int | None = None
    ) -> Generation:
        try:
            response = self._client.chat.completions.create(**self._request(messages, max_tokens))
        except openai.APITimeoutError as e:
            raise GenerationError(f"model server timed out after {self._settings.timeout_s}s") from e
        except openai.OpenAIError as e:
            raise GenerationError(f"model server at {self.base_url} failed: {type(e).__name__}") from e
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
            events = self._client.chat.completions.create(
                **self._request(messages, max_tokens), stream=True
            )
            for event in events:
                if event.choices and event.choices[0].delta.content:
                    yield event.choices[0].delta.content
        except openai.OpenAIError as e:
            raise GenerationError(f"model server at {self.base_url} failed mid-stream") from e

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
