from pathlib import Path

import pytest
from pydantic import ValidationError

from verity.core.settings import LOCAL_PROMPT_TOKENS, ONNX_BATCH, EmbedderSettings, LLMSettings, Settings

pytestmark = pytest.mark.unit


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VERITY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VERITY_STORE__DSN", "postgresql://u:p@db:5432/v")
    monkeypatch.setenv("VERITY_LLM__BASE_URL", "http://vllm:8000/v1")
    monkeypatch.setenv("VERITY_RETRIEVAL__TOP_K", "7")
    s = Settings(_env_file=None)
    assert s.data_dir == tmp_path
    assert s.store.dsn is not None and s.store.dsn.get_secret_value().endswith("/v")
    assert s.llm.base_url == "http://vllm:8000/v1"
    assert s.retrieval.top_k == 7


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("VERITY_CHUNKING__CHUNK_TOKENS=123\nVERITY_COLLECTION=handbook\n")
    s = Settings(_env_file=env)
    assert s.chunking.chunk_tokens == 123
    assert s.collection == "handbook"


def test_secrets_do_not_leak_into_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITY_STORE__DSN", "postgresql://u:hunter2@db/v")
    assert "hunter2" not in repr(Settings(_env_file=None))


@pytest.mark.parametrize(
    ("name", "value"),
    [("VERITY_CHUNKING__OVERLAP_TOKENS", "500"), ("VERITY_COLLECTION", "bad name!"),
     ("VERITY_SERVER__PORT", "70000")],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_the_prompt_limit_is_short_on_the_local_server_and_the_window_elsewhere() -> None:
    assert LLMSettings().prompt_limit() == LOCAL_PROMPT_TOKENS == 448
    assert LLMSettings(base_url="http://vllm:8000/v1").prompt_limit() is None
    assert LLMSettings(prompt_tokens=0).prompt_limit() is None  # 0: the whole window
    assert LLMSettings(prompt_tokens=512).prompt_limit() == 512


def test_int8_queries_need_the_onnx_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERITY_EMBEDDER__QUERY_PRECISION", "int8")
    assert Settings(_env_file=None).embedder.query_precision == "int8"
    monkeypatch.setenv("VERITY_EMBEDDER__BACKEND", "torch")
    with pytest.raises(ValidationError, match="query_precision int8 needs embedder.backend onnx"):
        Settings(_env_file=None)


def test_the_forward_batch_is_chosen_per_backend_unless_set() -> None:
    assert EmbedderSettings().forward_batch() == ONNX_BATCH == 1
    assert EmbedderSettings(backend="torch").forward_batch() == 64
    assert EmbedderSettings(backend="torch", batch_size=8).forward_batch() == 8
    with pytest.raises(ValidationError):
        EmbedderSettings(batch_size=0)
