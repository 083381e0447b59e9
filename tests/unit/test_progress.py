import io

import pytest

from ingest.progress import document_done, ingest_progress
from verity.core.progress import ProgressReporter, format_seconds, progress_by_label

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_and_one_at_close() -> None:
    clock, out = Clock(), io.StringIO()
    reporter = ingest_progress(total=10, stream=out, every_s=5, clock=clock, tty=False)
    progress = document_done(reporter)
    for t, chunks in [(1, 2), (2, 4), (6, 6), (7, 8)]:
        clock.now = 100 + t
        progress("doc", chunks)
    assert out.getvalue() == "ingest: 3/10 documents, 0.5 docs/s, 1.0 chunks/s, ETA 14s\n"
    clock.now = 108
    reporter.close()
    assert out.getvalue().splitlines()[-1] == (
        "ingest: 4/10 documents, 0.5 docs/s, 1.0 chunks/s, ETA 12s")


def test_without_a_total_there_is_no_eta() -> None:
    clock, out = Clock(), io.StringIO()
    reporter = ingest_progress(total=None, stream=out, every_s=0, clock=clock, tty=False)
    clock.now = 102
    document_done(reporter)("doc", 3)
    assert out.getvalue() == "ingest: 1 documents, 0.5 docs/s, 1.5 chunks/s\n"


def test_chunk_counts_reported_out_of_order_never_go_back() -> None:
    clock, out = Clock(), io.StringIO()
    reporter = ingest_progress(total=None, stream=out, every_s=0, clock=clock, tty=False)
    clock.now = 101
    progress = document_done(reporter)
    progress("a", 8)
    progress("b", 5)
    assert out.getvalue().splitlines()[-1] == "ingest: 2 documents, 2.0 docs/s, 8.0 chunks/s"


def test_a_caller_describes_its_own_lines_and_a_short_run_still_logs_one() -> None:
    clock, out = Clock(), io.StringIO()
    with ProgressReporter("train", every_s=60, stream=out, tty=False, clock=clock,
                          line=lambda s: f"step {s.done}/{s.total}, loss {s.values['loss']:.2f}"
                          ) as reporter:
        reporter.advance(total=4, loss=0.5)
        reporter.advance(total=4, loss=0.25)
        assert out.getvalue() == ""
    assert out.getvalue() == "train: step 2/4, loss 0.25\n"


def test_a_terminal_gets_a_bar_and_no_plain_lines() -> None:
    out = io.StringIO()
    with ProgressReporter("search", unit="q", total=3, every_s=0, stream=out, tty=True) as bar:
        for _ in range(3):
            bar.advance()
    assert "search" in out.getvalue() and "3/3" in out.getvalue()
    assert "search: 3/3\n" not in out.getvalue()


def test_one_reporter_per_label() -> None:
    clock, out = Clock(), io.StringIO()
    with progress_by_label(every_s=5, stream=out, tty=False, clock=clock) as progress:
        for done in (1, 2):
            progress("rag", done, 2)
            progress("crag", done, 2)
            clock.now += 6
    assert out.getvalue().splitlines() == ["rag: 2/2", "crag: 2/2", "rag: 2/2", "crag: 2/2"]


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59, "59s"), (187, "3m07s"),
                                               (7500, "2h05m")])
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
