"""The service under test with API keys required, for the API tests that act as several callers."""

from __future__ import annotations

from dataclasses import replace

from fastapi.testclient import TestClient

from service.app import create_app
from verity.answering.runtime import Runtime


def keyed_client(runtime: Runtime, **server: object) -> TestClient:
    """A client of the service over ``runtime`` with ``server.auth`` on (and any other
    ``server`` settings given); use it in ``with``."""
    settings = runtime.settings.model_copy(update={
        "server": runtime.settings.server.model_copy(update={"auth": True, **server})})
    return TestClient(create_app(settings, runtime=replace(runtime, settings=settings)))


def bearer(key: str) -> dict[str, str]:
    """The header that presents ``key``."""
    return {"Authorization": f"Bearer {key}"}
