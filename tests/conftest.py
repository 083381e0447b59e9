"""Session fixtures over real components: the embedded Postgres, the bundled embedder
and the local llama.cpp server on the bundled model. Nothing here is mocked."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests never read the developer's own configuration.
for _key in [k for k in os.environ if k.startswith("VERITY_")]:
    del os.environ[_key]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from verity.answering.runtime import Runtime  # noqa: E402
from verity.backends.embedders import LocalEmbedder, build_embedder  # noqa: E402
from verity.backends.generators import OpenAIChatGenerator  # noqa: E402
from verity.backends.llama_server import LlamaCppServer  # noqa: E402
from verity.backends.stores.database import Database  # noqa: E402
from verity.backends.stores.pgvector_store import PgvectorStore  # noqa: E402
from verity.core.prompts import PromptLibrary  # noqa: E402
from verity.core.settings import (  # noqa: E402
    EmbedderSettings,
    LLMSettings,
    RetrievalSettings,
    Settings,
    StoreSettings,
)

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, **overrides)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verity-data")


@pytest.fixture(scope="session")
def database(data_dir: Path) -> Iterator[Database]:
    db = Database(StoreSettings(), data_dir=data_dir).open()
    yield db
    db.close()


@pytest.fixture(scope="session")
def store(database: Database) -> PgvectorStore:
    return PgvectorStore(database)


@pytest.fixture(scope="session")
def embedder(data_dir: Path) -> LocalEmbedder:
    """The default embedder (ONNX int8), exported into the session's data directory."""
    e = build_embedder(EmbedderSettings(), data_dir=data_dir)
    e.warm_up()
    return e


@pytest.fixture(scope="session")
def llm_server(data_dir: Path) -> Iterator[LlamaCppServer]:
    with LlamaCppServer(LLMSettings(), data_dir=data_dir) as server:
        yield server


@pytest.fixture(scope="session")
def generator(llm_server: LlamaCppServer) -> OpenAIChatGenerator:
    # A generous timeout: tests share two cores with everything else running here.
    return OpenAIChatGenerator(LLMSettings(model=llm_server.model_name, timeout_s=900),
                               base_url=llm_server.base_url)


@pytest.fixture(scope="session")
def runtime(data_dir: Path, database: Database, store: PgvectorStore,
            embedder: LocalEmbedder, generator: OpenAIChatGenerator,
            llm_server: LlamaCppServer) -> Runtime:
    # The session's store has no lexical index: its settings say so, and BM25 runs in
    # PostgreSQL (tests/integration/test_lexical_index.py covers the index, the default).
    settings = make_settings(data_dir, retrieval=RetrievalSettings(lexical="postgres"))
    settings = settings.model_copy(update={"server": settings.server.model_copy(
        update={"auth": False})})
    return Runtime(settings=settings, db=database, store=store, embedder=embedder,
                   prompts=PromptLibrary.load(), generator=generator, llm_server=llm_server)


@pytest.fixture(scope="session")
def retrieval_runtime(data_dir: Path, database: Database, store: PgvectorStore,
                      embedder: LocalEmbedder) -> Runtime:
    """Backends without a generator (no llama.cpp server): enough for everything but answers."""
    settings = make_settings(data_dir, retrieval=RetrievalSettings(lexical="postgres"))
    return Runtime(settings=settings, db=database, store=store, embedder=embedder,
                   prompts=PromptLibrary.load())


@pytest.fixture
def collection() -> str:
    """A fresh collection name, so tests never see each other's documents."""
    return f"t-{uuid.uuid4().hex[:10]}"
