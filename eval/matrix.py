"""Configurations evaluated side by side in one run: ``--configs`` names or a YAML matrix.

A matrix file lists configurations; each names what it changes from the
settings in effect, and everything it leaves out stays as configured::

    # qa-matrix.yaml
    configs:
      - name: rag-hybrid
      - name: rag-dense-k3
        mode: dense
        top_k: 3
      - name: crag
        crag: true
      - name: rag-rerank
        rerank: cross-encoder
      - name: rag-chunks-128
        chunk_tokens: 128        # ingested into its own collection

For ``verity eval retrieval`` an entry's ``mode`` is a retrieval mode of the
harness (in process) or of ``/v1/search`` (with ``--url``), with ``depth``,
``oversample`` and ``chunk_tokens``.

Example:
    >>> [c.name for c in load_matrix(Path("qa-matrix.yaml"))]
    ['rag-hybrid', 'rag-dense-k3', 'crag', 'rag-rerank', 'rag-chunks-128']
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eval.datasets import DatasetError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class MatrixError(DatasetError):
    """A matrix file or ``--configs`` list that cannot be used; the message says where."""


class EvalConfig(BaseModel):
    """One configuration: a name and the settings it changes (unset = as configured)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="shown in reports; letters, digits, _ . + -")
    crag: bool = Field(default=False, description="QA: answer with corrective RAG")
    replay: bool = Field(default=False, description="QA: CRAG with the dataset's recorded web results")
    mode: str | None = Field(default=None, description="retrieval mode")
    top_k: int | None = Field(default=None, ge=1, le=100, description="sources per question")
    rerank: Literal["none", "cross-encoder", "remote", "llm-judge"] | None = Field(
        default=None, description="QA in process: reranker kind (unset = as configured)")
    chunk_tokens: int | None = Field(default=None, ge=16, description="re-chunk into own collection")
    depth: int | None = Field(default=None, ge=1, description="retrieval: chunks per query")
    oversample: int | None = Field(default=None, ge=1, description="retrieval: binary oversampling")

    def fingerprint(self) -> str:
        """A short hash of everything but the name: part of the answer cache's file name."""
        data = self.model_dump(exclude={"name"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]

    def changes(self) -> dict[str, Any]:
        """The settings this configuration sets (its entry in a report)."""
        return self.model_dump(exclude_defaults=True, exclude={"name"})


PRESETS: dict[str, EvalConfig] = {
    "rag": EvalConfig(name="rag"),
    "crag": EvalConfig(name="crag", crag=True),
    "crag+replay": EvalConfig(name="crag+replay", crag=True, replay=True),
}
"""The QA configurations ``--configs`` knows by name."""


def parse_configs(text: str) -> list[EvalConfig]:
    """``"rag,crag"`` -> the named presets.

    Raises:
        MatrixError: an unknown or repeated name, or none.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if not names or unknown or len(set(names)) != len(names):
        raise MatrixError(f"configs must be distinct names from {', '.join(PRESETS)}; got {text!r} "
                          "(use --matrix FILE for anything else)")
    return [PRESETS[n] for n in names]


def load_matrix(path: Path) -> list[EvalConfig]:
    """Read a YAML matrix: ``configs:`` (or a bare list) of configuration mappings.

    Raises:
        MatrixError: unreadable YAML, an unknown key, a bad value or a repeated name,
            naming the entry.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MatrixError(f"cannot read matrix {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise MatrixError(f"matrix {path} is not valid YAML: {e}") from e
    entries = raw.get("configs") if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not entries:
        raise MatrixError(f"matrix {path}: expected a non-empty list under 'configs:'")
    configs = []
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise MatrixError(f"matrix {path}, entry {i}: expected a mapping with a name")
        try:
            config = EvalConfig(**entry)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            message = first.get("msg")
            if first.get("type") == "extra_forbidden":
                message = f"unknown key; the keys are {', '.join(EvalConfig.model_fields)}"
            raise MatrixError(f"matrix {path}, entry {i} ({entry.get('name', '?')}): {where}: "
                              f"{message}") from None
        if not _NAME.match(config.name):
            raise MatrixError(f"matrix {path}, entry {i}: bad name {config.name!r}; use letters, "
                              "digits and _ . + - (up to 64)")
        configs.append(config)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise MatrixError(f"matrix {path}: configuration names repeat: {', '.join(names)}")
    return configs
