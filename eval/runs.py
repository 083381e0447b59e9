"""What the orchestration of retrieval and QA runs shares.

A run that searches its own corpus must ingest it first, but ``eval`` never imports
``ingest``: the caller passes an :data:`Ingest` callable that puts the run's corpus
into a collection, chunked as asked.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence

from verity.core.settings import ChunkingSettings

Ingest = Callable[[str, ChunkingSettings], None]
"""``ingest(collection, chunking)``: the run's corpus into ``collection``; raises if it fails."""


def command_line(argv: Sequence[str]) -> str:
    """The ``verity`` command with these arguments, quoted for a shell (a report's provenance)."""
    return " ".join(["verity", *(shlex.quote(a) for a in argv)])


def chunk_collection(collection: str, chunk_tokens: int | None) -> str:
    """The collection of a configuration: its own (``NAME-cTOKENS``) when it re-chunks."""
    return collection if chunk_tokens is None else f"{collection}-c{chunk_tokens}"


def chunking_for(chunking: ChunkingSettings, chunk_tokens: int | None) -> ChunkingSettings:
    """``chunking`` with a configuration's chunk size, if it sets one."""
    if chunk_tokens is None:
        return chunking
    return chunking.model_copy(update={"chunk_tokens": chunk_tokens})
