"""service/ and ingest/ never import each other, and verity/clients/ imports nothing of the server
(import-linter checks this too, in make lint)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("module", "forbidden"), [
    ("service.app", "ingest"), ("ingest.pipeline", "service"), ("verity.answering.runtime", "ingest"),
    ("ingest.worker", "service"), ("verity.backends.stores.jobs", "ingest"),
    # An application that only calls the API loads neither the server nor a framework.
    ("verity.clients", "verity.core"), ("verity.clients", "verity.backends"),
    ("verity.clients", "service"), ("verity.clients", "langchain_core"),
    ("verity.clients", "llama_index"),
    # The kernel loads no database, model or HTTP library.
    ("verity.core.settings", "psycopg"), ("verity.core.protocols", "torch"),
    ("verity.core.prompts", "httpx"),
])
def test_module_does_not_pull_in(module: str, forbidden: str) -> None:
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m == {forbidden!r} "
            f"or m.startswith({forbidden!r} + '.')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
