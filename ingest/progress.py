"""Ingestion progress: documents and chunks, shown by :class:`verity.core.progress.ProgressReporter`.

Off a terminal (CI, files, pipes) a plain line every few seconds and one at the end,
``ingest: DONE/TOTAL documents, docs/s, chunks/s, ETA``; on a terminal a bar. Both
take the pipeline's ``progress(source, chunks_written)`` calls, which may come from
more than one thread.

Example:
    >>> with ingest_progress(total=5183, every_s=5) as reporter:
    ...     pipeline.ingest_documents(docs, collection="c", progress=document_done(reporter))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

from verity.core.progress import DEFAULT_EVERY_S, ProgressReporter, ProgressState


def ingest_line(state: ProgressState) -> str:
    """``3/10 documents, 0.5 docs/s, 1.0 chunks/s, ETA 14s`` (no ETA without a total)."""
    chunks = state.values.get("chunks", 0)
    done = f"{state.done:,}/{state.total:,}" if state.total else f"{state.done:,}"
    text = (f"{done} documents, {state.per_second(state.done):.1f} docs/s, "
            f"{state.per_second(chunks):.1f} chunks/s")
    return f"{text}, {state.eta()}" if state.total else text


def chunk_rate(state: ProgressState) -> str:
    """What a terminal's bar shows beside the documents: ``1,200 chunks, 6.8 chunks/s``."""
    chunks = state.values.get("chunks", 0)
    return f"{chunks:,.0f} chunks, {state.per_second(chunks):.1f} chunks/s"


def ingest_progress(*, total: int | None, every_s: float = DEFAULT_EVERY_S,
                    stream: TextIO | None = None, tty: bool | None = None,
                    clock: Callable[[], float] = time.monotonic) -> ProgressReporter:
    """The reporter of one ingestion of ``total`` documents (None if unknown)."""
    return ProgressReporter("ingest", unit="doc", total=total, every_s=every_s, line=ingest_line,
                            postfix=chunk_rate, stream=stream, tty=tty, clock=clock)


def document_done(reporter: ProgressReporter) -> Callable[[str, int], None]:
    """The pipeline's ``progress(source, chunks_written)`` callback, reporting to ``reporter``.

    Threads may report out of order; the chunk count shown never goes back.
    """
    lock = threading.Lock()
    most = [0]

    def progress(source: str, chunks_written: int) -> None:
        with lock:
            most[0] = max(most[0], chunks_written)
            reporter.advance(chunks=most[0])

    return progress
