"""Progress of long runs: a bar on a terminal, plain lines every few seconds otherwise.

One reporter serves ingestion, evaluation and training. Off a terminal (CI, files,
pipes) it writes ``LABEL: DETAIL`` every ``every_s`` seconds and once more when
closed, so even a short run logs a line; on a terminal it draws a tqdm bar instead.
What the detail says is the caller's: a function of the :class:`ProgressState`.

Example:
    >>> with ProgressReporter("ingest", unit="doc", total=5183) as progress:
    ...     for document in documents:
    ...         progress.advance(chunks=store(document))
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

DEFAULT_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class ProgressState:
    """How far a run has come: ``done`` of ``total`` units after ``elapsed`` seconds, and the
    latest ``values`` reported with them (e.g. chunks written, a training loss)."""

    done: int
    total: int | None
    elapsed: float
    values: Mapping[str, float]

    def per_second(self, count: float) -> float:
        """``count`` divided by the seconds elapsed."""
        return count / max(self.elapsed, 1e-9)

    def eta(self) -> str:
        """``ETA 3m07s`` from the rate so far; ``ETA unknown`` before anything is done."""
        rate = self.per_second(self.done)
        if rate <= 0:
            return "ETA unknown"
        return f"ETA {format_seconds(max((self.total or 0) - self.done, 0) / rate)}"


Describe = Callable[[ProgressState], str]


def fraction(state: ProgressState) -> str:
    """``DONE/TOTAL`` (or ``DONE`` without a total): the default detail."""
    return f"{state.done}/{state.total}" if state.total else f"{state.done}"


class ProgressReporter:
    """Counts units done and shows it: a tqdm bar on a terminal, else a line every ``every_s``.

    Thread-safe: :meth:`advance` may be called from several threads.

    Args:
        label: what runs (``ingest``, ``train``, a configuration's name); starts each line.
        unit: the bar's unit.
        total: units expected, if known (:meth:`advance` may set it later).
        every_s: seconds between plain lines; a last one is written by :meth:`close`.
        line: the detail of a plain line.
        postfix: the detail after the bar on a terminal (none if None).
        stream: where to write (default: stderr).
        tty: draw a bar (default: whether ``stream`` is a terminal).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, label: str, *, unit: str = "it", total: int | None = None,
                 every_s: float = DEFAULT_EVERY_S, line: Describe = fraction,
                 postfix: Describe | None = None, stream: TextIO | None = None,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.every_s = every_s
        self._line = line
        self._postfix = postfix
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._started = self._last = clock()
        self._done = 0
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()
        use_bar = self._stream.isatty() if tty is None else tty
        self._bar = _tqdm(label, unit=unit, total=total, stream=self._stream) if use_bar else None

    def advance(self, n: int = 1, *, total: int | None = None, **values: float) -> None:
        """``n`` more units done; ``values`` replace those reported before."""
        with self._lock:
            self._done += n
            self._values.update(values)
            if total is not None:
                self.total = total
            now = self._clock()
            if self._bar is not None:
                self._draw(n, now)
            elif now - self._last >= self.every_s:
                self._last = now
                self._write(now)

    def close(self) -> None:
        """Close the bar, or write the last line."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
            else:
                self._write(self._clock())

    @property
    def done(self) -> int:
        """Units done so far."""
        return self._done

    def state(self, now: float) -> ProgressState:
        """The counts so far, at time ``now`` of the reporter's clock."""
        return ProgressState(done=self._done, total=self.total, elapsed=now - self._started,
                             values=dict(self._values))

    def line(self, now: float) -> str:
        """The plain line for the counts so far, at time ``now``."""
        return f"{self.label}: {self._line(self.state(now))}"

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _draw(self, n: int, now: float) -> None:
        assert self._bar is not None
        self._bar.total = self.total
        self._bar.update(n)
        if self._postfix is not None:
            self._bar.set_postfix_str(self._postfix(self.state(now)), refresh=False)

    def _write(self, now: float) -> None:
        self._stream.write(self.line(now) + "\n")
        self._stream.flush()


@contextmanager
def progress_by_label(*, unit: str = "it", every_s: float = DEFAULT_EVERY_S,
                      stream: TextIO | None = None, tty: bool | None = None,
                      clock: Callable[[], float] = time.monotonic,
                      ) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(label, done, total)`` callback with one reporter per label, closed at exit.

    For runs that advance several things side by side, e.g. one configuration per label.
    """
    reporters: dict[str, ProgressReporter] = {}

    def progress(label: str, done: int, total: int) -> None:
        if label not in reporters:
            reporters[label] = ProgressReporter(label, unit=unit, total=total, every_s=every_s,
                                                stream=stream, tty=tty, clock=clock)
        reporter = reporters[label]
        reporter.advance(done - reporter.done, total=total)

    try:
        yield progress
    finally:
        for reporter in reporters.values():
            reporter.close()


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``2h05m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _tqdm(label: str, *, unit: str, total: int | None, stream: TextIO) -> Any:
    """A tqdm bar (imported only when a terminal shows one)."""
    from tqdm import tqdm

    return tqdm(desc=label, unit=unit, total=total, file=stream)
