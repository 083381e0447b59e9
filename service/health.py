"""``GET /healthz`` on a port of its own, answered by a thread beside the API's event loop.

Under load the API's single event loop serves every connection, and a liveness probe's
new connection waits its turn among them: at 128 busy clients on two cores, 0.1 to 0.9 s
(docs/BENCHMARKS.md, "Load"), where an orchestrator allows a few seconds before it
restarts a healthy process. This listener answers from a thread of its own, so a probe
does not queue behind the API's traffic. It still reports the API: the event loop
touches a heartbeat every half second (:func:`beat`), and a loop that has not run for
``stale_after_s`` makes the probe fail with 503, so a stuck process is restarted as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

BEAT_EVERY_S = 0.5


class Heartbeat:
    """When the API's event loop last ran (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    async def beat(self) -> None:
        """Touch the heartbeat every :data:`BEAT_EVERY_S`, on the loop being watched, until
        cancelled."""
        while True:
            self.at = time.monotonic()
            await asyncio.sleep(BEAT_EVERY_S)

    def idle_s(self) -> float:
        return time.monotonic() - self.at


class HealthListener:
    """``GET /healthz`` on ``host:port`` from a daemon thread: 200 ``{"status": "ok"}`` while
    ``idle_s()`` is under ``stale_after_s``, else 503 ``{"status": "stalled", ...}``.

    Example:
        >>> listener = HealthListener("127.0.0.1", 8001, idle_s=heartbeat.idle_s)
        >>> listener.start()   # OSError if the port cannot be bound
        >>> listener.stop()
    """

    def __init__(self, host: str, port: int, *, idle_s: Callable[[], float],
                 stale_after_s: float = 5.0) -> None:
        self.host, self.port = host, port
        self._idle_s, self._stale_after_s = idle_s, stale_after_s
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve.

        Raises:
            OSError: the port cannot be bound (in use, or not allowed).
        """
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                if self.path.split("?", 1)[0] != "/healthz":
                    self._send(404, {"error": {"type": "not_found",
                                               "message": "only GET /healthz is served here"}})
                    return
                idle = listener._idle_s()
                if idle < listener._stale_after_s:
                    self._send(200, {"status": "ok"})
                else:
                    self._send(503, {"status": "stalled", "loop_idle_s": round(idle, 1)})

            def _send(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # probes every few seconds would flood the log

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="health",
                                        daemon=True)
        self._thread.start()
        log.info("liveness probe on http://%s:%s/healthz", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
