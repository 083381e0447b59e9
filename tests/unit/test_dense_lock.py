"""The dense index's read-write lock: searches share it, an update has it alone and is not
starved by a steady stream of searches."""

import threading
import time

from verity.backends.stores.dense_index import _ReadWriteLock


def test_an_update_waits_for_searches_and_is_not_starved_by_new_ones() -> None:
    lock = _ReadWriteLock()
    stop = threading.Event()
    inside = {"readers": 0, "most": 0, "during_write": 0}
    guard = threading.Lock()
    writing = threading.Event()

    def search() -> None:
        while not stop.is_set():
            with lock.read():
                with guard:
                    inside["readers"] += 1
                    inside["most"] = max(inside["most"], inside["readers"])
                    inside["during_write"] += writing.is_set()
                time.sleep(0.002)
                with guard:
                    inside["readers"] -= 1

    threads = [threading.Thread(target=search) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)

    def update() -> None:
        with lock.write():
            writing.set()
            time.sleep(0.05)
            writing.clear()

    writer = threading.Thread(target=update)
    writer.start()
    writer.join(timeout=2.0)
    starved = writer.is_alive()
    stop.set()  # lets a starved update in at last
    for t in [*threads, writer]:
        t.join()
    assert not starved, "the update waited for the searches for over 2 s"
    assert inside["most"] > 1  # searches overlap
    assert inside["during_write"] == 0  # none while the update runs
