"""The clients against a real ``verity serve`` (API keys on), as an application uses them.

The corpus is ingested and the key created with the CLI, in subprocesses, in the
server's own data directory. Only ``/v1/search`` is called: the retrievers need
nothing else, and answering with the local model is slow on a shared machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from verity.backends.llama_server import free_port
from verity.clients.http import Mode, VerityAPIError, VerityClient
from verity.clients.langchain import VerityRetriever as LangChainRetriever
from verity.clients.llamaindex import VerityRetriever as LlamaIndexRetriever
from verity.core.settings import RetrievalSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VERITY = [sys.executable, "-m", "verity.cli"]

CORPUS = {
    "sourdough.md": "# Sourdough baking\n\n## Starter\n\nFeed the sourdough starter every day with "
                    "equal weights of rye flour and water, and keep it in a warm kitchen.\n\n"
                    "## Baking\n\nBake the loaf at 250 degrees Celsius in a covered cast-iron pot "
                    "for twenty minutes, then uncover it until the crust is dark.\n",
    "lighthouse.md": "# Lighthouse keeping\n\nThe keeper lights the lamp at dusk, winds the clockwork "
                     "that turns the lens, and writes the weather into the log every hour.\n",
    "volcanoes.md": "# Volcanoes\n\nA stratovolcano is built from layers of ash and lava; its "
                    "eruptions are explosive because the magma is thick and traps gas.\n",
}


@dataclass(frozen=True)
class Server:
    base_url: str
    key: str


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERITY_")}
    env.update(VERITY_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1")
    return env


def _cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(VERITY + args, env=env, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"verity serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"verity serve did not become healthy:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def serving(root: Path, env: dict[str, str]) -> Iterator[Server]:
    """``verity serve`` on a free port over ``env``'s data directory, with a new API key of the
    default tenant; stopped on exit. Its log is ``root/serve.log``."""
    key = _cli(["keys", "create", "--tenant", "default"], env).strip()
    port = free_port()
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(VERITY + ["serve", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base_url, log)
        yield Server(base_url=base_url, key=key)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``verity serve`` with API keys on, over collection ``kb`` of three small documents."""
    root = tmp_path_factory.mktemp("clients")
    docs = root / "kb"
    docs.mkdir()
    for name, text in CORPUS.items():
        (docs / name).write_text(text)
    env = _env(root / "data")
    _cli(["ingest", str(docs), "--collection", "kb"], env)
    with serving(root, env) as server:
        yield server


def test_http_client_searches_with_a_key(server: Server) -> None:
    with VerityClient(server.base_url, api_key=server.key) as verity:
        result = verity.search("How often do I feed the starter?", collection="kb", top_k=2)
    assert [h.rank for h in result.results] == [1, 2]
    top = result.results[0]
    assert top.document == "kb/sourdough.md" and "rye flour" in top.text
    assert top.heading == "Sourdough baking > Starter" and top.title == "Sourdough baking"
    assert "total_ms" in result.timings


def test_langchain_retriever_returns_documents(server: Server) -> None:
    retriever = LangChainRetriever(base_url=server.base_url, api_key=SecretStr(server.key), collection="kb")
    docs = retriever.invoke("Who lights the lamp at dusk?")
    assert docs and docs[0].metadata["document"] == "kb/lighthouse.md"
    assert "lamp at dusk" in docs[0].page_content
    assert set(docs[0].metadata) == {"document", "chunk_id", "score", "scores", "heading", "page",
                                     "title"}
    assert docs[0].id == docs[0].metadata["chunk_id"]
    assert docs[0].metadata["score"] >= docs[-1].metadata["score"]


def test_langchain_retriever_async(server: Server) -> None:
    retriever = LangChainRetriever(base_url=server.base_url, api_key=SecretStr(server.key), collection="kb",
                                   top_k=1)
    docs = asyncio.run(retriever.ainvoke("Why are stratovolcano eruptions explosive?"))
    assert [d.metadata["document"] for d in docs] == ["kb/volcanoes.md"]


def test_llamaindex_retriever_returns_scored_nodes(server: Server) -> None:
    retriever = LlamaIndexRetriever(server.base_url, api_key=server.key, collection="kb")
    nodes = retriever.retrieve("At what temperature is the loaf baked?")
    top = nodes[0]
    assert top.node.metadata["document"] == "kb/sourdough.md"
    assert "250 degrees" in top.node.get_content()
    assert top.node.node_id == top.node.metadata["chunk_id"] and top.score == top.node.metadata["score"]
    scores = [n.score for n in nodes if n.score is not None]
    assert len(scores) == len(nodes) and scores == sorted(scores, reverse=True)


def test_llamaindex_retriever_async(server: Server) -> None:
    retriever = LlamaIndexRetriever(server.base_url, api_key=server.key, collection="kb", top_k=1)
    nodes = asyncio.run(retriever.aretrieve("clockwork that turns the lens"))
    assert [n.node.metadata["document"] for n in nodes] == ["kb/lighthouse.md"]


@pytest.mark.parametrize("top_k", [1, 3])
def test_top_k_reaches_the_server(server: Server, top_k: int) -> None:
    query = "sourdough starter"
    lc = LangChainRetriever(base_url=server.base_url, api_key=SecretStr(server.key), collection="kb",
                            top_k=top_k).invoke(query)
    li = LlamaIndexRetriever(server.base_url, api_key=server.key, collection="kb",
                             top_k=top_k).retrieve(query)
    assert len(lc) == len(li) == top_k


@pytest.mark.parametrize(("mode", "stage"), [
    ("bm25", "bm25"), ("dense", f"dense_{RetrievalSettings().dense_mode}")])
def test_mode_reaches_the_server(server: Server, mode: Mode, stage: str) -> None:
    docs = LangChainRetriever(base_url=server.base_url, api_key=SecretStr(server.key), collection="kb",
                              mode=mode).invoke("lighthouse keeper")
    assert docs and all(set(d.metadata["scores"]) == {stage} for d in docs)


def test_filters_reach_the_server(server: Server) -> None:
    # The ingested Markdown files carry no metadata, so any condition excludes every chunk.
    filters = {"dept": "hr"}
    assert LangChainRetriever(base_url=server.base_url, api_key=SecretStr(server.key), collection="kb",
                              filters=filters).invoke("sourdough") == []
    assert LlamaIndexRetriever(server.base_url, api_key=server.key, collection="kb",
                               filters=filters).retrieve("sourdough") == []
    with pytest.raises(VerityAPIError) as bad:
        LangChainRetriever(base_url=server.base_url, api_key=SecretStr(server.key), collection="kb",
                           filters={"year": {"between": [1, 2]}}).invoke("sourdough")
    assert bad.value.status_code == 422 and bad.value.type == "invalid_request"


def test_wrong_key_raises_a_clear_error(server: Server) -> None:
    retrievers: list[Callable[[str], object]] = [
        LangChainRetriever(base_url=server.base_url, api_key=SecretStr("vk_wrong"), collection="kb").invoke,
        LlamaIndexRetriever(server.base_url, api_key="vk_wrong", collection="kb").retrieve,
    ]
    for retrieve in retrievers:
        with pytest.raises(VerityAPIError) as err:
            retrieve("sourdough")
        assert err.value.status_code == 401 and err.value.type == "unauthorized"
        assert str(err.value) == "Verity answered 401 unauthorized: invalid or revoked API key"


def test_missing_key_and_missing_collection_are_clear(server: Server) -> None:
    with VerityClient(server.base_url) as anonymous, pytest.raises(VerityAPIError) as err:
        anonymous.search("sourdough", collection="kb")
    assert err.value.status_code == 401 and "Authorization: Bearer KEY" in err.value.message
    with VerityClient(server.base_url, api_key=server.key) as verity, \
            pytest.raises(VerityAPIError) as missing:
        verity.search("sourdough", collection="nothing-here")
    assert missing.value.status_code == 404 and missing.value.type == "not_found"
