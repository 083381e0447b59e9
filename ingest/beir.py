"""BEIR corpora (``corpus.jsonl``: one ``{"_id", "title", "text"}`` record a line) as Documents.

Each record becomes one document whose source is its ``_id``, so retrieval
results can be scored against the dataset's qrels directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ingest.loaders import json_lines
from verity.core.errors import LoaderError
from verity.core.types import Document, Section

CORPUS_FILE = "corpus.jsonl"


def load_beir_corpus(path: Path, *, fingerprint: str) -> Iterator[Document]:
    """Stream the documents of a BEIR corpus, in file order.

    Args:
        path: a BEIR dataset folder holding ``corpus.jsonl``, or that file itself.
        fingerprint: mixed into every content hash (the pipeline's chunking and
            embedding settings), as for files.

    Yields:
        One Document per record: source = ``_id``, title = ``title``, one
        Section with ``text`` (the title when the text is empty).

    Raises:
        LoaderError: the corpus is missing or unreadable, or a record is
            malformed (the message names its line).
    """
    corpus = path / CORPUS_FILE if path.is_dir() else path
    try:
        with corpus.open(encoding="utf-8-sig") as lines:
            for number, record in json_lines(lines):
                yield beir_document(record, number=number, fingerprint=fingerprint)
    except FileNotFoundError as e:
        raise LoaderError(f"no BEIR corpus at {corpus}; pass a BEIR dataset folder holding "
                          f"{CORPUS_FILE}, or the file itself") from e
    except (OSError, UnicodeDecodeError) as e:
        raise LoaderError(f"cannot read {corpus} ({type(e).__name__}); check the file") from e
    except LoaderError as e:
        raise LoaderError(f"{corpus}: {e}") from e


def beir_document(record: Any, *, number: int, fingerprint: str) -> Document:
    """One corpus record (parsed JSON) as a Document; ``number`` is its line, for messages.

    Raises:
        LoaderError: the record has no ``_id``.
    """
    if not isinstance(record, dict) or not str(record.get("_id", "")).strip():
        raise LoaderError(f'line {number} is not a BEIR record with an "_id"; fix or remove it')
    title, text = str(record.get("title") or ""), str(record.get("text") or "")
    digest = hashlib.sha256(f"{title}\x00{text}\x00{fingerprint}".encode())
    return Document(source=str(record["_id"]).strip(), title=title,
                    sections=(Section(text=text or title),), content_hash=digest.hexdigest())
