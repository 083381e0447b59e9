"""BEIR corpus records as :class:`core.types.Document`, for ``verity eval`` to ingest.

A stand-in for ``ingest/beir.py`` (being written separately) with the same
signature, ``load_beir_corpus(path, *, fingerprint)``, so replacing it is a
one-line import change in ``cli/main.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from core.types import Document, Section
from eval.datasets import CorpusRecord, iter_corpus

log = logging.getLogger(__name__)


def load_beir_corpus(path: Path, *, fingerprint: str) -> Iterator[Document]:
    """One Document per corpus record, with the record's ``_id`` as its source.

    Args:
        path: the BEIR dataset folder (or its ``corpus.jsonl``).
        fingerprint: the ingest pipeline's settings fingerprint, mixed into
            each content hash so changed chunking or model settings re-ingest.

    Raises:
        DatasetError: the corpus file is missing or malformed.
    """
    for record in iter_corpus(path):
        document = record_to_document(record, fingerprint=fingerprint)
        if document is None:
            log.warning("skipped BEIR document %s: no title and no text", record.id)
            continue
        yield document


def record_to_document(record: CorpusRecord, *, fingerprint: str) -> Document | None:
    """The record as a one-section Document; None if it has no text at all.

    The title stays the document's title (the ingest pipeline embeds it in
    front of each chunk's text); a record with only a title uses it as text.
    """
    text = record.text.strip() or record.title.strip()
    if not text:
        return None
    digest = hashlib.sha256(json.dumps([record.id, record.title, record.text]).encode())
    digest.update(b"\x00" + fingerprint.encode())
    return Document(source=record.id, title=record.title.strip(), sections=(Section(text=text),),
                    content_hash=digest.hexdigest(), metadata={"beir_id": record.id})
