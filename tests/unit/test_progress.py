import io

import pytest

from ingest.progress import ProgressLog, format_seconds

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_and_one_at_close() -> None:
    clock, out = Clock(), io.StringIO()
    log = ProgressLog(total=10, stream=out, every_s=5, clock=clock)
    for t, chunks in [(1, 2), (2, 4), (6, 6), (7, 8)]:
        clock.now = 100 + t
        log.update("doc", chunks)
    assert out.getvalue() == "ingest: 3/10 documents, 0.5 docs/s, 1.0 chunks/s, ETA 14s\n"
    clock.now = 108
    log.close()
    assert out.getvalue().splitlines()[-1] == (
        "ingest: 4/10 documents, 0.5 docs/s, 1.0 chunks/s, ETA 12s")


def test_without_a_total_there_is_no_eta() -> None:
    clock, out = Clock(), io.StringIO()
    log = ProgressLog(total=None, stream=out, every_s=0, clock=clock)
    clock.now = 102
    log.update("doc", 3)
    assert out.getvalue() == "ingest: 1 documents, 0.5 docs/s, 1.5 chunks/s\n"


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59, "59s"), (187, "3m07s"),
                                               (7500, "2h05m")])
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text
