"""Per-document metadata and access groups: from sidecar files and from the command line.

A file ``NAME.meta.json`` next to ``NAME`` holds that document's attributes::

    {"metadata": {"owner": "hr", "year": 2024}, "groups": ["hr", "legal"]}

Attributes given for a whole run (``verity ingest --group hr --meta key=value``)
apply to every document of the run: a document's own metadata keys win, and
groups are unioned. The content hash covers the resulting attributes, so a
changed sidecar or option re-ingests the document.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from verity.core.errors import LoaderError
from verity.core.types import Document

SIDECAR_SUFFIX = ".meta.json"
_SIDECAR_KEYS = ("metadata", "groups")


@dataclass(frozen=True)
class DocumentAttributes:
    """Metadata and ACL groups to attach to documents.

    Example:
        >>> run = DocumentAttributes(metadata={"team": "hr"}, groups=("hr",))
        >>> document = apply_attributes(document, run)
    """

    metadata: Mapping[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()


def is_sidecar(name: str) -> bool:
    """Whether a file name is a sidecar (never ingested as a document itself)."""
    return name.lower().endswith(SIDECAR_SUFFIX)


def sidecar_path(path: Path) -> Path:
    """Where the sidecar of ``path`` would be: ``report.pdf`` -> ``report.pdf.meta.json``."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> DocumentAttributes | None:
    """The attributes in the sidecar of ``path``, or None when it has none.

    Raises:
        LoaderError: the sidecar is unreadable or malformed (one line, naming the sidecar).
    """
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8"))
        return _attributes(value)
    except (OSError, UnicodeDecodeError) as e:
        raise LoaderError(f"cannot read sidecar {sidecar.name} ({type(e).__name__})") from e
    except json.JSONDecodeError as e:
        raise LoaderError(f"sidecar {sidecar.name} is not valid JSON (line {e.lineno}: {e.msg}); "
                          "fix or delete it") from e
    except ValueError as e:
        raise LoaderError(f"sidecar {sidecar.name}: {e}; fix or delete it") from e


def _attributes(value: Any) -> DocumentAttributes:
    if not isinstance(value, dict):
        raise ValueError('expected an object like {"metadata": {...}, "groups": [...]}')
    unknown = sorted(set(value) - set(_SIDECAR_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (allowed: {', '.join(_SIDECAR_KEYS)})")
    metadata = value.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError('"metadata" must be an object')
    groups = value.get("groups", [])
    if not isinstance(groups, list):
        raise ValueError('"groups" must be a list of strings')
    return DocumentAttributes(metadata=metadata, groups=clean_groups(groups))


def clean_groups(groups: Iterable[object]) -> tuple[str, ...]:
    """Group names stripped, deduplicated and sorted.

    Raises:
        ValueError: a group is not a non-blank string.
    """
    cleaned = set()
    for group in groups:
        if not isinstance(group, str) or not group.strip():
            raise ValueError(f"group names must be non-blank strings, got {group!r}")
        cleaned.add(group.strip())
    return tuple(sorted(cleaned))


def apply_attributes(document: Document, run: DocumentAttributes) -> Document:
    """``document`` with the run's attributes merged in and its content hash covering them.

    The document's own metadata keys win over the run's; groups are unioned. A
    document left with no metadata and no groups keeps its hash unchanged.
    """
    metadata = {**run.metadata, **document.metadata}
    groups = tuple(sorted(set(run.groups) | set(document.acl_groups)))
    if not metadata and not groups:
        return document
    canonical = json.dumps({"metadata": metadata, "groups": groups}, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{document.content_hash}\x00{canonical}".encode())
    return replace(document, metadata=metadata, acl_groups=groups,
                   content_hash=digest.hexdigest())
