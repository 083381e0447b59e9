"""Convert the bundled GGUF into a Hugging Face model directory that vLLM can serve.

The bundled generator ships only as a Q4_K_M GGUF (see ``verity/backends/models.py``), while
vLLM serves Hugging Face safetensors checkpoints (its GGUF loading is experimental).
This script dequantizes the GGUF once with transformers (which needs the ``gguf``
and ``accelerate`` packages), rebuilds a plain model from the config, and writes
safetensors weights, the tokenizer (with its chat template) and a ``config.json``
without ``quantization_config``.

It is idempotent: the output directory holds a stamp with the source GGUF's
SHA-256, and a directory whose stamp matches is left alone. A new directory is
written beside the target and renamed into place, so an interrupted run never
leaves a half-written model that looks finished.

Usage::

    python deploy/vllm/convert_gguf.py --out ~/.cache/verity/vllm-model
    vllm serve ~/.cache/verity/vllm-model --served-model-name verity-vllm --enforce-eager

Run it with a Python that has Verity installed plus transformers, gguf and accelerate (the
project's ``.venv`` after ``make install``); ``make vllm-model`` does exactly that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from verity.backends.models import GGUF_SHA256, resolve_gguf, sha256_file
from verity.core.errors import ConfigError
from verity.core.settings import BUNDLED_GGUF, Settings

STAMP_NAME = "verity-source.sha256"
DEFAULT_OUT = Path.home() / ".cache" / "verity" / "vllm-model"


def source_digest(gguf_path: str, gguf: Path) -> str:
    """The SHA-256 of the GGUF: the pinned value for the bundled model (already checked)."""
    return GGUF_SHA256 if gguf_path == BUNDLED_GGUF else sha256_file(gguf)


def is_converted(out: Path, digest: str, *, dtype: str) -> bool:
    """Whether ``out`` holds a finished conversion of the GGUF with this digest, in ``dtype``."""
    stamp, config = out / STAMP_NAME, out / "config.json"
    if not (stamp.is_file() and config.is_file()) or stamp.read_text().strip() != digest:
        return False
    return bool(json.loads(config.read_text()).get("torch_dtype") == dtype)


def _import_converters() -> tuple[Any, Any, Any]:
    """``torch`` and the transformers auto classes, or a ``ConfigError`` saying what to install."""
    try:
        # transformers loads a GGUF only when both of these are installed.
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ConfigError(
            f"converting a GGUF needs torch, transformers, gguf and accelerate ({e.name} is "
            "missing): run `make install` (the dev extra has them) and use .venv/bin/python, "
            "or `pip install transformers gguf accelerate`"
        ) from e
    return torch, AutoModelForCausalLM, AutoTokenizer


def convert(gguf: Path, staging: Path, *, dtype: str = "bfloat16") -> None:
    """Write the dequantized model and its tokenizer from ``gguf`` into ``staging``.

    Args:
        gguf: the GGUF file.
        staging: an empty or missing directory to write into.
        dtype: torch dtype of the saved weights; vLLM's CPU build runs bfloat16 or float32.

    Raises:
        ConfigError: transformers or gguf is missing, or the tokenizer has no chat template.
    """
    torch, auto_model, auto_tokenizer = _import_converters()
    torch_dtype = getattr(torch, dtype)
    source = auto_model.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A fresh model from the config carries none of the GGUF loader's quantization state.
    model = auto_model.from_config(source.config, dtype=torch_dtype)
    model.load_state_dict(source.state_dict())
    del source
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer = auto_tokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{gguf} has no chat template; vLLM's chat API needs one")
    tokenizer.save_pretrained(str(staging))
    _clean_config(staging / "config.json", dtype=dtype)


def _clean_config(path: Path, *, dtype: str) -> None:
    config = json.loads(path.read_text())
    config.pop("quantization_config", None)
    config["dtype"] = config["torch_dtype"] = dtype
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def convert_once(gguf_path: str, *, data_dir: Path, out: Path, dtype: str = "bfloat16") -> bool:
    """Convert the GGUF into ``out`` unless ``out`` already holds it.

    Args:
        gguf_path: ``VERITY_LLM__GGUF_PATH``: a file, or the bundled model's name.
        data_dir: where the bundled GGUF is assembled (``VERITY_DATA_DIR``).
        out: the model directory to create or replace.
        dtype: torch dtype of the saved weights.

    Returns:
        True if a conversion ran, False if ``out`` was already up to date.

    Raises:
        ConfigError: the GGUF is missing or corrupt, or the converters are not installed.
    """
    gguf = resolve_gguf(gguf_path, data_dir=data_dir)
    digest = source_digest(gguf_path, gguf)
    if is_converted(out, digest, dtype=dtype):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        convert(gguf, staging, dtype=dtype)
        (staging / STAMP_NAME).write_text(digest + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model directory to write")
    parser.add_argument("--gguf", default=BUNDLED_GGUF, help="GGUF file (default: the bundled one)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the bundled GGUF is assembled (default: VERITY_DATA_DIR)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args(argv)
    out = args.out.expanduser().resolve()
    data_dir = args.data_dir.expanduser() if args.data_dir else Settings().data_dir
    started = time.monotonic()
    try:
        ran = convert_once(args.gguf, data_dir=data_dir, out=out, dtype=args.dtype)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ran:
        print(f"converted {args.gguf} into {out} in {time.monotonic() - started:.1f}s")
    else:
        print(f"{out} is up to date ({STAMP_NAME} matches the GGUF); nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
