"""The liveness probe on a port of its own (``VERITY_SERVER__HEALTH_PORT``): served from a
thread beside the event loop, failing when that loop stops running."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.health import HealthListener
from verity.answering.runtime import Runtime
from verity.backends.llama_server import free_port
from verity.core.settings import ServerSettings


def test_the_health_port_answers_while_the_app_runs_and_closes_with_it(
    retrieval_runtime: Runtime,
) -> None:
    port = free_port()
    server = retrieval_runtime.settings.server.model_copy(update={"health_port": port})
    settings = retrieval_runtime.settings.model_copy(update={"server": server})
    app = create_app(settings, runtime=replace(retrieval_runtime, settings=settings))
    url = f"http://127.0.0.1:{port}"
    with TestClient(app) as client:
        r = httpx.get(f"{url}/healthz", timeout=5)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert httpx.get(f"{url}/v1/search", timeout=5).status_code == 404
        assert client.get("/healthz").json() == {"status": "ok"}  # the API's own, as before
        time.sleep(1.5)  # the loop beats every 0.5 s
        assert app.state.health_listener._idle_s() < 1.0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)


def test_without_the_setting_no_port_is_opened(retrieval_runtime: Runtime) -> None:
    assert retrieval_runtime.settings.server.health_port is None
    app = create_app(retrieval_runtime.settings, runtime=retrieval_runtime)
    with TestClient(app):
        assert not hasattr(app.state, "health_listener")


def test_a_loop_that_stopped_running_fails_the_probe() -> None:
    idle = [0.2]
    listener = HealthListener("127.0.0.1", 0, idle_s=lambda: idle[0], stale_after_s=5.0)
    listener.start()
    try:
        url = f"http://127.0.0.1:{listener.port}/healthz"
        assert httpx.get(url, timeout=5).status_code == 200
        idle[0] = 7.0
        r = httpx.get(url, timeout=5)
        assert r.status_code == 503 and r.json() == {"status": "stalled", "loop_idle_s": 7.0}
    finally:
        listener.stop()


def test_a_taken_port_is_an_error_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listener = HealthListener("127.0.0.1", taken.getsockname()[1], idle_s=lambda: 0.0)
        with pytest.raises(OSError):
            listener.start()


def test_the_health_port_must_differ_from_the_api_port() -> None:
    with pytest.raises(ValidationError, match="health_port must differ"):
        ServerSettings(port=8000, health_port=8000)
    assert ServerSettings(port=8000, health_port=8001).health_port == 8001
