"""Files to :class:`verity.core.types.Document`: one loader per format, chosen by suffix.

Each loader returns sections (text + heading path + page) so chunks can carry
where they came from. A file that cannot be read raises ``LoaderError`` with a
one-line reason; the caller skips it and goes on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ingest.attributes import DocumentAttributes, read_sidecar
from verity.core.errors import LoaderError
from verity.core.types import KEPT_FILE_TYPES, Document, Section, StoredFile

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
        metadata = reader.metadata
        title = str(metadata.get("/Title") or "") if metadata is not None else ""
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise LoaderError(f"unreadable PDF ({type(e).__name__})") from e
    sections = [Section(text=t, page=i) for i, t in enumerate(pages, start=1) if t.strip()]
    if not sections:
        raise LoaderError("PDF has no text layer (scanned images need OCR first)")
    return title or Path(name).stem, sections


# What python-docx and python-pptx raise on damaged files: not a zip, a missing
# part, a part of the wrong type, malformed XML (lxml's errors are SyntaxErrors)
# or XML that lacks what the library expects.
_OFFICE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, TypeError,
                  AttributeError, IndexError, SyntaxError, OSError)
_HEADING_STYLE = re.compile(r"^Heading (\d)$")
# What an Office file (a zip) may unpack to: real documents of the upload limit's size unpack
# to a few times that; a zip bomb of a few hundred kB unpacks to gigabytes.
MAX_UNPACKED_BYTES = 256_000_000


def check_unpacked_size(data: bytes, *, limit: int = MAX_UNPACKED_BYTES) -> None:
    """Refuse a zip whose members unpack to more than ``limit`` bytes, before reading any.

    The sizes come from the zip's directory; a member that unpacks to more than its
    declared size fails when it is read (``zipfile`` stops at the declared size).

    A file that is not a zip passes: its loader reports it as unreadable.

    Raises:
        LoaderError: over the limit.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    if unpacked > limit:
        raise LoaderError(f"unpacks to {unpacked / 1e6:.0f} MB, over the {limit / 1e6:.0f} MB "
                          "limit for Office files (a zip bomb?)")


def load_docx(data: bytes, name: str) -> tuple[str, list[Section]]:
    """A Word document, one section per heading; Heading 1-9 styles give the heading path.

    Raises:
        LoaderError: the file is not a readable .docx.
    """
    import docx

    check_unpacked_size(data)
    try:
        document = docx.Document(io.BytesIO(data))
        title, sections = _docx_sections(document)
        title = document.core_properties.title or title
    except _OFFICE_ERRORS as e:
        raise LoaderError(f"unreadable Word document ({type(e).__name__}); open and re-save it "
                          "in Word, or export it to PDF") from e
    return title or Path(name).stem, sections


def _docx_sections(document: Any) -> tuple[str, list[Section]]:
    """Body paragraphs and table rows in order, grouped under their heading path.

    A section's text starts with its own heading; a heading with no body under
    it (before a subheading, say) lives on only in its subsections' paths.
    """
    from docx.table import Table

    path: list[tuple[int, str]] = []
    sections: list[Section] = []
    body: list[str] = []
    title = ""
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            body.extend(_table_lines(block.rows))
            continue
        text = block.text.strip()
        level = _heading_level(block.style.name if block.style is not None else "")
        if level is None or not text:
            body.append(text)
            continue
        sections.append(_docx_section(path, body))
        path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, text)]
        body = []
        title = title or text
    sections.append(_docx_section(path, body))
    return title, [s for s in sections if s.text]


def _docx_section(path: list[tuple[int, str]], body: list[str]) -> Section:
    """The section under ``path``; empty text when ``body`` has none."""
    text = "\n".join(line for line in body if line)
    if text and path:
        text = f"{path[-1][1]}\n{text}"
    return Section(text=text, heading=" > ".join(t for _, t in path))


def _heading_level(style: str) -> int | None:
    """0 for the Title style, N for "Heading N", None for body text."""
    if style == "Title":
        return 0
    match = _HEADING_STYLE.match(style)
    return int(match.group(1)) if match else None


def _table_lines(rows: Iterable[Any]) -> Iterator[str]:
    """One line per table row, cells joined by " | " (a merged cell counts once)."""
    for row in rows:
        cells: list[str] = []
        for cell in row.cells:
            text = cell.text.strip()
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            yield " | ".join(cells)


def load_pptx(data: bytes, name: str) -> tuple[str, list[Section]]:
    """A PowerPoint deck, one section per slide (``page`` is the 1-based slide number).

    The slide's title becomes the section heading; text boxes, tables, grouped
    shapes and speaker notes are all kept.

    Raises:
        LoaderError: the file is not a readable .pptx.
    """
    import pptx

    check_unpacked_size(data)
    try:
        deck = pptx.Presentation(io.BytesIO(data))
        sections = [_slide_section(slide, number) for number, slide in enumerate(deck.slides, 1)]
        title = deck.core_properties.title
    except _OFFICE_ERRORS as e:
        raise LoaderError(f"unreadable PowerPoint file ({type(e).__name__}); open and re-save it "
                          "in PowerPoint, or export it to PDF") from e
    title = title or next((s.heading for s in sections if s.heading), "")
    return title or Path(name).stem, sections


def _slide_section(slide: Any, number: int) -> Section:
    title_shape = slide.shapes.title
    heading = title_shape.text_frame.text.strip() if title_shape is not None else ""
    lines = list(_shape_lines(slide.shapes))
    if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
        notes = slide.notes_slide.notes_text_frame.text.strip()
        if notes:
            lines.append(f"Notes: {notes}")
    return Section(text="\n".join(lines), heading=heading, page=number)


def _shape_lines(shapes: Iterable[Any]) -> Iterator[str]:
    """Text of shapes in slide order, descending into groups."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shape_lines(shape.shapes)
        elif shape.has_text_frame and shape.text_frame.text.strip():
            yield shape.text_frame.text.strip()
        elif shape.has_table:
            yield from _table_lines(shape.table.rows)


CSV_ROWS_PER_SECTION = 50


def load_csv(data: bytes, name: str) -> tuple[str, list[Section]]:
    """A table, one section per ``CSV_ROWS_PER_SECTION`` rows.

    The first row is the header. Each row becomes "column: value" lines (empty
    values are left out), so every chunk keeps the column names of its values.
    The delimiter (comma, semicolon, tab or bar) is detected.

    Raises:
        LoaderError: malformed CSV (the message names the line), or no rows under the header.
    """
    text = _decode(data)
    reader = csv.reader(io.StringIO(text, newline=""), dialect=_csv_dialect(text), strict=True)
    try:
        header = [h.strip() for h in next(reader, [])]
        rows = [row for row in reader if any(v.strip() for v in row)]
    except csv.Error as e:
        raise LoaderError(f"malformed CSV near line {reader.line_num} ({e}); fix that line") from e
    if not rows:
        raise LoaderError("CSV has no rows under its header")
    sections = []
    for start in range(0, len(rows), CSV_ROWS_PER_SECTION):
        part = rows[start:start + CSV_ROWS_PER_SECTION]
        records = ["\n".join(_csv_row_lines(header, row)) for row in part]
        sections.append(Section(text="\n\n".join(records),
                                heading=f"rows {start + 1}-{start + len(part)}"))
    return Path(name).stem, sections


def _csv_dialect(text: str) -> type[csv.Dialect]:
    try:
        return csv.Sniffer().sniff(text[:16384], delimiters=",;\t|")
    except csv.Error:
        return csv.excel


def _csv_row_lines(header: list[str], row: list[str]) -> Iterator[str]:
    for i, value in enumerate(row):
        if value.strip():
            column = header[i] if i < len(header) and header[i] else f"column {i + 1}"
            yield f"{column}: {value.strip()}"


def load_json(data: bytes, name: str) -> tuple[str, list[Section]]:
    """A JSON value as "key.path[0]: value" lines, a blank line between top-level entries.

    A top-level ``title`` string becomes the title.

    Raises:
        LoaderError: invalid JSON (the message gives line and column).
    """
    try:
        value = json.loads(_decode(data))
    except json.JSONDecodeError as e:
        raise LoaderError(f"invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
                          "fix the file") from e
    except RecursionError as e:
        raise LoaderError("JSON is nested too deeply to read") from e
    title = value.get("title") if isinstance(value, dict) else None
    return (title if isinstance(title, str) and title.strip() else Path(name).stem,
            [Section(text=render_json(value))])


def load_jsonl(data: bytes, name: str) -> tuple[str, list[Section]]:
    """JSON Lines, one section per non-blank line (heading "line N").

    Raises:
        LoaderError: a line is not valid JSON; the whole file fails, naming the line.
    """
    lines = _decode(data).splitlines()
    sections = [Section(text=render_json(value), heading=f"line {number}")
                for number, value in json_lines(lines)]
    return Path(name).stem, sections


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of JSON Lines text.

    Raises:
        LoaderError: a line is not valid JSON (the message names it).
    """
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, _json_line(line, number)


def _json_line(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise LoaderError(f"line {number} is not valid JSON ({e.msg} at column {e.colno}); "
                          "fix or remove that line") from e
    except RecursionError as e:
        raise LoaderError(f"line {number} is nested too deeply to read") from e


def render_json(value: Any) -> str:
    """Readable text for a JSON value: one "key.path: value" line per leaf.

    Top-level entries are separated by a blank line, so the splitter keeps each
    entry (an array's record, an object's field) together where it can.

    Raises:
        LoaderError: nested too deeply to render.
    """
    if isinstance(value, dict):
        entries = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        entries = [(f"[{i}]", v) for i, v in enumerate(value)]
    else:
        return _json_scalar(value)
    try:
        return "\n\n".join("\n".join(_key_paths(v, path)) for path, v in entries)
    except RecursionError as e:
        raise LoaderError("JSON is nested too deeply to read") from e


def _key_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _key_paths(child, f"{path}.{key}")
    elif isinstance(value, list) and value:
        for i, child in enumerate(value):
            yield from _key_paths(child, f"{path}[{i}]")
    else:
        yield f"{path}: {_json_scalar(value)}"


def _json_scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


LOADERS: dict[str, Loader] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".pptx": load_pptx,
    ".csv": load_csv,
    ".json": load_json,
    ".jsonl": load_jsonl,
}


def printable_name(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (which Python keeps as lone surrogates,
    and PostgreSQL, JSON and logs cannot carry) are written as ``\\xNN`` escapes, so
    ``caf\\xe9.md`` names the Latin-1 file ``café.md``, the same one on every run."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def load_file(
    path: Path, *, source: str, max_bytes: int, fingerprint: str = ""
) -> Document:
    """Read one file, and its sidecar ``NAME.meta.json`` if there is one, into a Document.

    Args:
        path: the file.
        source: the name it is stored and cited under.
        max_bytes: larger files are refused.
        fingerprint: mixed into the content hash, so a change of chunking or
            embedding settings re-ingests unchanged files.

    Raises:
        LoaderError: unsupported type, too large, unreadable, empty or malformed,
            or a malformed sidecar.
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
    attributes = read_sidecar(path) or DocumentAttributes()
    title, sections = loader(data, printable_name(path.name))
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise LoaderError("no text found")
    digest = hashlib.sha256(data)
    digest.update(fingerprint.encode())
    media_type = KEPT_FILE_TYPES.get(path.suffix.lower())
    if media_type:  # stored before files were kept: written again once, with the file
        digest.update(b"|file")
    return Document(source=source, title=title, sections=tuple(sections),
                    content_hash=digest.hexdigest(), metadata=dict(attributes.metadata),
                    acl_groups=attributes.groups,
                    original=StoredFile(media_type, data) if media_type else None)
