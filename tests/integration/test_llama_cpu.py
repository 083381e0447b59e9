"""The answer model on the CPU: requantized weights and the ggml CPU back-end variants,
with the real llama.cpp build and the bundled GGUF."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from llama_cpp import Llama

from verity.backends.llama_server import (
    PORTABLE_CPU_VARIANTS,
    LlamaCppServer,
    cpu_backend_plan,
    cpu_variant_scores,
    cpu_variants,
    llama_lib_dir,
)
from verity.backends.models import GGUF_SHA256, check_gguf, requantize_gguf, resolve_gguf
from verity.core.errors import ConfigError
from verity.core.settings import BUNDLED_GGUF, LLMSettings

pytestmark = pytest.mark.integration


def file_type(path: Path) -> int:
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    return int(llm.metadata["general.file_type"])


def test_requantizing_writes_the_format_once_keyed_by_source_and_format(
        data_dir: Path, tmp_path: Path) -> None:
    source = resolve_gguf(BUNDLED_GGUF, data_dir=data_dir)
    made = requantize_gguf(source, quant="q4_0", source_sha256=GGUF_SHA256, data_dir=tmp_path)
    assert made.parent == tmp_path / "models" and "q4_0" in made.name
    assert GGUF_SHA256[:16] in made.name
    assert check_gguf(made) == made and file_type(made) == 2  # LLAMA_FTYPE_MOSTLY_Q4_0
    assert file_type(source) == 15 and made.stat().st_size < source.stat().st_size
    assert [p.name for p in made.parent.iterdir()] == [made.name]  # no partial file left
    written = made.stat().st_mtime_ns
    assert requantize_gguf(source, quant="q4_0", source_sha256=GGUF_SHA256,
                           data_dir=tmp_path) == made
    assert made.stat().st_mtime_ns == written
    other = requantize_gguf(source, quant="q4_0", source_sha256="0" * 64, data_dir=tmp_path)
    assert other != made


def test_an_unknown_format_is_a_config_error(data_dir: Path, tmp_path: Path) -> None:
    source = resolve_gguf(BUNDLED_GGUF, data_dir=data_dir)
    with pytest.raises(ConfigError, match="q4_0, q8_0"):
        requantize_gguf(source, quant="q2_k", source_sha256=GGUF_SHA256, data_dir=tmp_path)


def test_the_build_ships_variants_and_auto_picks_the_best_this_cpu_runs() -> None:
    variants = cpu_variants(llama_lib_dir())
    assert {"x64", "haswell", "skylakex", "zen4"} <= set(variants)
    scores = cpu_variant_scores(variants)
    plan = cpu_backend_plan("auto", scores=scores)
    assert scores[plan[0]] == max(scores.values()) > 0
    assert plan[-1] in PORTABLE_CPU_VARIANTS and scores[plan[-1]] > 0


def test_the_server_falls_back_to_the_next_backend_and_serves(tmp_path: Path,
                                                              data_dir: Path) -> None:
    scores = cpu_variant_scores(cpu_variants(llama_lib_dir()))
    unusable = sorted(n for n, s in scores.items() if s == 0)
    if not unusable:
        pytest.skip("this CPU runs every ggml CPU variant: none fails to load")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / resolve_gguf(BUNDLED_GGUF, data_dir=data_dir).name).symlink_to(
        resolve_gguf(BUNDLED_GGUF, data_dir=data_dir))
    settings = LLMSettings(cpu_backend=f"{unusable[0]},haswell")
    with LlamaCppServer(settings, data_dir=tmp_path) as server:
        assert server.cpu_backend == "haswell"
        r = httpx.post(f"{server.base_url}/completions", timeout=300,
                       json={"prompt": "The capital of France is", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["text"].strip()
    log = server.log_path.read_text(errors="replace")
    assert f"libggml-cpu-{unusable[0]}.so" in log and "libggml-cpu-haswell.so" in log
