"""Token-aware splitting with the embedder's own tokenizer.

LangChain's recursive splitter does the work (paragraphs, then lines, then
sentences, then words), measuring length in the embedding model's tokens so
no chunk is silently truncated by the model.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from verity.core.types import Chunk, Document, chunk_id

_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (which no tokenizer or database accepts) as U+FFFD.

    Loaders decode with replacement, so only text built in code can hold them.
    """
    return _SURROGATE.sub("\ufffd", text)


class TokenSplitter:
    """Splits a document's sections into chunks of at most ``chunk_tokens`` tokens.

    Example:
        >>> splitter = TokenSplitter(embedder.tokenizer, chunk_tokens=200, overlap_tokens=32)
        >>> chunks = splitter.split(document, doc_id="abc")
    """

    def __init__(self, tokenizer: Any, *, chunk_tokens: int, overlap_tokens: int) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self._tokenizer = tokenizer
        # A fast tokenizer must not be used by two threads at once ("Already borrowed").
        self._lock = threading.Lock()
        self._splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
            tokenizer,
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            separators=["\n\n", "\n", ". ", " ", ""],
            keep_separator="end",
        )

    def split(self, document: Document, *, doc_id: str) -> list[Chunk]:
        with self._lock:
            return self._split(document, doc_id=doc_id)

    def _split(self, document: Document, *, doc_id: str) -> list[Chunk]:
        chunks: list[Chunk] = []
        for section in document.sections:
            for piece in self._splitter.split_text(valid_text(section.text)):
                text = piece.strip()
                if not text:
                    continue
                chunks.append(Chunk(
                    id=chunk_id(doc_id, len(chunks)), document_id=doc_id, ordinal=len(chunks),
                    text=text, heading=section.heading, page=section.page,
                    token_count=len(self._tokenizer.encode(text, add_special_tokens=False)),
                ))
        return chunks


def embedding_text(chunk: Chunk, *, title: str) -> str:
    """What is embedded for a chunk: its title and heading path give it context."""
    context = chunk.heading or title
    return f"{context}\n{chunk.text}" if context and context not in chunk.text[:200] else chunk.text
