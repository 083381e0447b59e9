"""Ingestion progress as plain log lines, for when stderr is not a terminal (CI, files, pipes).

A terminal gets a progress bar instead (the CLI uses tqdm there). Both take the
pipeline's ``progress(source, chunks_written)`` calls, which may come from more
than one thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO


class ProgressLog:
    """Writes ``ingest: DONE/TOTAL documents, docs/s, chunks/s, ETA`` every ``every_s`` seconds.

    A last line is written by :meth:`close`, so even a short run logs one.

    Example:
        >>> log = ProgressLog(total=5183, stream=sys.stderr, every_s=5)
        >>> pipeline.ingest_documents(docs, collection="c", progress=log.update)
        >>> log.close()
    """

    def __init__(self, *, total: int | None, stream: TextIO, every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.every_s = every_s
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._last = self._started
        self._docs = 0
        self._chunks = 0
        self._lock = threading.Lock()

    def update(self, source: str, chunks_written: int) -> None:
        """One more document done (written, unchanged or skipped); ``chunks_written`` so far."""
        with self._lock:
            self._docs += 1
            self._chunks = max(self._chunks, chunks_written)
            now = self._clock()
            if now - self._last >= self.every_s:
                self._last = now
                self._write(now)

    def close(self) -> None:
        with self._lock:
            self._write(self._clock())

    def line(self, now: float) -> str:
        """The log line for the counts so far, at time ``now``."""
        elapsed = max(now - self._started, 1e-9)
        docs_s, chunks_s = self._docs / elapsed, self._chunks / elapsed
        done = f"{self._docs:,}/{self.total:,}" if self.total else f"{self._docs:,}"
        text = f"ingest: {done} documents, {docs_s:.1f} docs/s, {chunks_s:.1f} chunks/s"
        if self.total:
            left = max(self.total - self._docs, 0)
            eta = left / docs_s if docs_s > 0 else None
            text += f", ETA {format_seconds(eta)}" if eta is not None else ", ETA unknown"
        return text

    def _write(self, now: float) -> None:
        self._stream.write(self.line(now) + "\n")
        self._stream.flush()


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``2h05m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
