"""Files to :class:`core.types.Document`: one loader per format, chosen by suffix.

Each loader returns sections (text + heading path + page) so chunks can carry
where they came from. A file that cannot be read raises ``LoaderError`` with a
one-line reason; the caller skips it and goes on.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

from core.errors import LoaderError
from core.types import Document, Section

Loader = Callable[[bytes, str], tuple[str, list[Section]]]


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise LoaderError("binary content, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LoaderError(f"not UTF-8 text (invalid byte at offset {e.start})") from e


def load_text(data: bytes, name: str) -> tuple[str, list[Section]]:
    return Path(name).stem, [Section(text=_decode(data))]


def load_markdown(data: bytes, name: str) -> tuple[str, list[Section]]:
    """Sections by heading, via LangChain's Markdown header splitter; headings are kept."""
    from langchain_text_splitters import MarkdownHeaderTextSplitter

    text = _decode(data)
    levels = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
    splitter = MarkdownHeaderTextSplitter(levels, strip_headers=False)
    sections = []
    title = ""
    for part in splitter.split_text(text):
        path = [str(part.metadata[key]) for _, key in levels if key in part.metadata]
        title = title or (path[0] if path else "")
        sections.append(Section(text=part.page_content, heading=" > ".join(path)))
    return title or Path(name).stem, sections


def load_html(data: bytes, name: str) -> tuple[str, list[Section]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(data), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return title or Path(name).stem, [Section(text="\n".join(x for x in lines if x))]


def load_pdf(data: bytes, name: str) -> tuple[str, list[Section]]:
    """The PDF's text layer, one section per page (1-based page numbers kept)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = str((reader.metadata or {}).get("/Title") or "")
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise LoaderError(f"unreadable PDF ({type(e).__name__})") from e
    sections = [Section(text=t, page=i) for i, t in enumerate(pages, start=1) if t.strip()]
    if not sections:
        raise LoaderError("PDF has no text layer (scanned images need OCR first)")
    return title or Path(name).stem, sections


LOADERS: dict[str, Loader] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
}


def load_file(
    path: Path, *, source: str, max_bytes: int, fingerprint: str = ""
) -> Document:
    """Read one file into a Document.

    Args:
        path: the file.
        source: the name it is stored and cited under.
        max_bytes: larger files are refused.
        fingerprint: mixed into the content hash, so a change of chunking or
            embedding settings re-ingests unchanged files.

    Raises:
        LoaderError: unsupported type, too large, unreadable, empty or malformed.
    """
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoaderError(f"unsupported file type {path.suffix or '(none)'!r}")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise LoaderError(f"file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit")
        data = path.read_bytes()
    except OSError as e:
        raise LoaderError(f"cannot read file ({e.strerror or type(e).__name__})") from e
    if not data.strip():
        raise LoaderError("empty file")
    title, sections = loader(data, path.name)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise LoaderError("no text found")
    digest = hashlib.sha256(data)
    digest.update(fingerprint.encode())
    return Document(source=source, title=title, sections=tuple(sections),
                    content_hash=digest.hexdigest())
