"""Request limits: body size (ASGI middleware), per-key rate limits (token buckets) and the
bounded queue in front of the model server."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import send_error
from verity.core.errors import BusyError, CancelledError, RateLimitError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(StarletteHTTPException):
    """The body went over the limit while it was being read.

    An ``HTTPException``, so that FastAPI passes it on as a 413 instead of
    turning it into a 400 when it interrupts parsing of a streamed body.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body over the {limit} byte limit")


class BodySizeLimit:
    """Refuses bodies over ``max_bytes`` (``upload_bytes`` for multipart uploads) with 413.

    Checks ``Content-Length`` up front and counts streamed chunks too, so a
    chunked body cannot slip past the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        is_upload = headers.get("content-type", "").startswith("multipart/form-data")
        limit = self.upload_bytes if is_upload else self.max_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    await send_error(send, status=413, kind="payload_too_large",
                     message=f"request body over the {limit} byte limit")


_IDLE_S = 60.0


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to the same number.

    Example:
        >>> limiter = RateLimiter(per_minute=60)
        >>> limiter.check("key-1")  # raises RateLimitError when the bucket is empty
    """

    def __init__(self, *, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._swept = clock()

    def check(self, key: str) -> None:
        """Take one token for ``key``.

        Raises:
            RateLimitError: no token left; ``retry_after_s`` says when one will be.
        """
        if self.per_minute <= 0:
            return
        rate = self.per_minute / 60.0
        now = self._clock()
        with self._lock:
            self._sweep(now)
            tokens, last = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimitError(f"rate limit of {self.per_minute} requests a minute reached",
                                     retry_after_s=(1.0 - tokens) / rate)
            self._buckets[key] = (tokens - 1.0, now)

    def _sweep(self, now: float) -> None:
        """Forget keys idle for a minute, at most once a minute (the caller holds the lock).

        An empty bucket refills completely in a minute, so a key idle that long is as if
        never seen: dropping it changes no answer, and the table holds only the keys of the
        last two minutes instead of every key ever presented.
        """
        if now - self._swept < _IDLE_S:
            return
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < _IDLE_S}
        self._swept = now

    def __len__(self) -> int:
        """How many keys have a bucket now."""
        return len(self._buckets)


class ModelQueue:
    """Bounded concurrency in front of the generator: ``slots`` answers at once, ``depth`` waiting.

    A request that finds every slot taken and the queue full, or that waits longer
    than ``wait_s``, gets :class:`BusyError` (503 ``model_busy`` with Retry-After) instead
    of queueing without bound behind the model server. Retry-After is the running mean
    of how long a slot is held, times the requests ahead, over the slots.

    Example:
        >>> queue = ModelQueue(slots=1, depth=32, wait_s=120)
        >>> with queue.acquire():
        ...     answer = rag.complete(prepared)
    """

    def __init__(self, *, slots: int, depth: int, wait_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.slots = slots
        self.depth = depth
        self.wait_s = wait_s
        self._clock = clock
        self.running = 0
        self.waiting = 0
        self._held_s = 5.0
        self._cond = threading.Condition()

    def acquire(self, *, gone: Callable[[], bool] | None = None) -> Slot:
        """A slot, once one is free; release it (or leave its ``with`` block) when done.

        Args:
            gone: asked every half second while waiting; when it says the client has
                left, the wait ends (a waiting request holds a request thread).

        Raises:
            BusyError: the queue is full, or no slot came free within ``wait_s``.
            CancelledError: ``gone`` said the client left while it waited.
        """
        with self._cond:
            if self.running >= self.slots:
                if self.waiting >= self.depth:
                    raise self._busy("the model server's queue is full")
                self.waiting += 1
                try:
                    self._wait(gone)
                finally:
                    self.waiting -= 1
            self.running += 1
        return Slot(self, started=self._clock())

    def _wait(self, gone: Callable[[], bool] | None) -> None:
        """Wait for a free slot (the caller holds the condition's lock)."""
        deadline = self._clock() + self.wait_s
        while self.running >= self.slots:
            left = deadline - self._clock()
            if left <= 0:
                raise self._busy(f"no model slot came free in {self.wait_s:.0f}s")
            self._cond.wait(min(left, 0.5))
            if gone is not None and self._unlocked(gone):
                raise CancelledError("the client went away while waiting for the model")

    def _unlocked(self, ask: Callable[[], bool]) -> bool:
        """``ask()`` without the lock: it may wait on the event loop, which releases slots."""
        self._cond.release()
        try:
            return ask()
        finally:
            self._cond.acquire()

    def release(self, *, started: float) -> None:
        with self._cond:
            self.running -= 1
            self._held_s = 0.8 * self._held_s + 0.2 * (self._clock() - started)
            self._cond.notify()

    def _busy(self, why: str) -> BusyError:
        ahead = self.waiting + self.running
        return BusyError(f"{why}; retry later", retry_after_s=self._held_s * ahead / self.slots)


class Slot:
    """One held place of a :class:`ModelQueue`; releasing it twice releases it once."""

    def __init__(self, queue: ModelQueue, *, started: float) -> None:
        self._queue = queue
        self._started = started
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._queue.release(started=self._started)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
