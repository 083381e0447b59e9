"""The per-key rate limiter (service/limits.py), on a clock the test moves."""

from __future__ import annotations

import threading
import time

import pytest

from service.limits import ModelQueue, RateLimiter, Slot
from verity.core.errors import BusyError, CancelledError, RateLimitError

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_per_minute_requests_then_waits() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=3, clock=clock)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimitError) as caught:
        limiter.check("a")
    assert caught.value.retry_after_s == pytest.approx(20.0)
    limiter.check("b")  # another key has its own bucket
    clock.now += 20.0
    limiter.check("a")


def test_idle_keys_are_forgotten_so_the_table_stays_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=2, clock=clock)
    for i in range(1000):
        limiter.check(f"key-{i}")
    assert len(limiter) == 1000
    clock.now += 61.0
    limiter.check("fresh")
    assert len(limiter) == 1


def test_forgetting_an_idle_key_changes_no_answer() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=2, clock=clock)
    limiter.check("a")
    limiter.check("a")
    clock.now += 30.0  # one token back
    limiter.check("a")
    with pytest.raises(RateLimitError):
        limiter.check("a")
    clock.now += 61.0  # swept, and would have been full anyway
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimitError):
        limiter.check("a")


def test_the_model_queue_admits_slots_then_waiters_then_refuses() -> None:
    queue = ModelQueue(slots=1, depth=1, wait_s=10)
    first = queue.acquire()
    got: list[Slot] = []
    waiter = threading.Thread(target=lambda: got.append(queue.acquire()))
    waiter.start()
    deadline = time.monotonic() + 5
    while queue.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(BusyError, match="full") as refused:
        queue.acquire()
    assert refused.value.retry_after_s > 0
    first.release()
    first.release()  # a second release gives nothing back twice
    waiter.join(5)
    assert len(got) == 1 and queue.running == 1 and queue.waiting == 0
    got[0].release()
    assert queue.running == 0


def test_a_model_queue_waiter_gives_up_after_wait_s() -> None:
    queue = ModelQueue(slots=1, depth=4, wait_s=0.2)
    with queue.acquire():
        started = time.monotonic()
        with pytest.raises(BusyError, match="no model slot"):
            queue.acquire()
        assert time.monotonic() - started >= 0.2
    assert queue.running == 0 and queue.waiting == 0
    queue.acquire().release()


def test_a_model_queue_waiter_whose_client_left_gives_its_place_up() -> None:
    queue = ModelQueue(slots=1, depth=4, wait_s=30)
    left = threading.Event()
    with queue.acquire():
        threading.Timer(0.3, left.set).start()
        started = time.monotonic()
        with pytest.raises(CancelledError):
            queue.acquire(gone=left.is_set)
        assert time.monotonic() - started < 5
        assert queue.waiting == 0
