from pathlib import Path

import pytest

from core.errors import LoaderError
from ingest.loaders import load_file
from tests.helpers import make_pdf

pytestmark = pytest.mark.unit

MB = 1_000_000


def _load(path: Path, max_bytes: int = MB):
    return load_file(path, source=path.name, max_bytes=max_bytes)


def test_markdown_keeps_heading_paths(tmp_path: Path) -> None:
    p = tmp_path / "guide.md"
    p.write_text("# Guide\nIntro.\n## Install\nRun make.\n## Use\nAsk things.\n")
    doc = _load(p)
    assert doc.title == "Guide"
    assert [s.heading for s in doc.sections] == ["Guide", "Guide > Install", "Guide > Use"]
    assert "Run make." in doc.sections[1].text


def test_html_drops_scripts_and_markup(tmp_path: Path) -> None:
    p = tmp_path / "page.html"
    p.write_text("<html><head><title>T</title><script>evil()</script></head>"
                 "<body><p>Hello <b>world</b></p></body></html>")
    doc = _load(p)
    assert doc.title == "T"
    assert "Hello" in doc.text and "world" in doc.text and "evil" not in doc.text


def test_pdf_keeps_page_numbers(tmp_path: Path) -> None:
    p = tmp_path / "report.pdf"
    p.write_bytes(make_pdf(["First page text", "Second page text"]))
    doc = _load(p)
    assert [(s.page, s.text.strip()) for s in doc.sections] == [
        (1, "First page text"), (2, "Second page text")]


def test_content_hash_depends_on_bytes_and_fingerprint(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("one")
    h1 = load_file(p, source="a.txt", max_bytes=MB).content_hash
    assert load_file(p, source="a.txt", max_bytes=MB, fingerprint="x").content_hash != h1
    p.write_text("two")
    assert load_file(p, source="a.txt", max_bytes=MB).content_hash != h1


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("blank.md", b"  \n\n ", "empty file"),
        ("junk.txt", b"\x00\x01\x02binary", "binary"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
        ("broken.pdf", b"%PDF-1.4 this is not a pdf", "PDF"),
        ("image.png", b"\x89PNG....", "unsupported file type"),
    ],
)
def test_bad_files_raise_one_line_reasons(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(LoaderError, match=reason) as info:
        _load(p)
    assert "\n" not in str(info.value)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.txt"
    p.write_text("x" * 2000)
    with pytest.raises(LoaderError, match="over the"):
        _load(p, max_bytes=1000)


def test_unreadable_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="cannot read"):
        _load(tmp_path / "missing.txt")
