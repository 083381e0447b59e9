from pathlib import Path

import pytest

from ingest.loaders import CSV_ROWS_PER_SECTION, load_file
from tests.helpers import make_docx, make_pdf, make_pptx, replace_zip_member
from verity.core.errors import LoaderError
from verity.core.types import Document

pytestmark = pytest.mark.unit

MB = 1_000_000


def _load(path: Path, max_bytes: int = MB) -> Document:
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


def test_only_a_pdf_keeps_its_original_bytes(tmp_path: Path) -> None:
    data = make_pdf(["First page.", "Second page."])
    (tmp_path / "a.pdf").write_bytes(data)
    (tmp_path / "a.md").write_text("# A\n\nText.")
    pdf = load_file(tmp_path / "a.pdf", source="a.pdf", max_bytes=10**6)
    assert pdf.original is not None
    assert (pdf.original.media_type, pdf.original.content) == ("application/pdf", data)
    assert load_file(tmp_path / "a.md", source="a.md", max_bytes=10**6).original is None
    assert "original" not in repr(pdf)  # bytes stay out of logs


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
        ("data.json", b'{"a": 1,}', "invalid JSON at line 1"),
        ("empty.json", b"{}", "no text found"),
        ("header-only.csv", b"a,b,c\n", "no rows"),
        ("bad.csv", b'a,b\n"x,y\n', "malformed CSV"),
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


def test_docx_heading_styles_give_the_heading_path(tmp_path: Path) -> None:
    p = tmp_path / "handbook.docx"
    p.write_bytes(make_docx(
        [("Title", "Handbook"), ("Normal", "Welcome."), ("Heading 1", "Leave"),
         ("Heading 2", "Parental"), ("Normal", "Sixteen weeks."), ("Heading 2", "Sick"),
         ("Normal", "Ten days."), ("Heading 1", "Pay"), ("Normal", "Paid monthly.")],
        table=[["Grade", "Salary"], ["A", "100"]]))
    doc = _load(p)
    assert doc.title == "Handbook"
    assert [s.heading for s in doc.sections] == [
        "Handbook", "Handbook > Leave > Parental", "Handbook > Leave > Sick", "Handbook > Pay"]
    assert doc.sections[1].text == "Parental\nSixteen weeks."
    assert "Grade | Salary\nA | 100" in doc.sections[3].text


def test_pptx_has_one_section_per_slide_with_its_number(tmp_path: Path) -> None:
    p = tmp_path / "q1.pptx"
    p.write_bytes(make_pptx([("Q1 results", "Revenue rose 5%", "Mention churn"),
                             ("Plan", "Hire two engineers", "")]))
    doc = _load(p)
    assert doc.title == "Q1 results"
    assert [(s.page, s.heading) for s in doc.sections] == [(1, "Q1 results"), (2, "Plan")]
    assert doc.sections[0].text == "Q1 results\nRevenue rose 5%\nNotes: Mention churn"


def test_csv_rows_become_column_value_lines_in_sections_of_50(tmp_path: Path) -> None:
    p = tmp_path / "staff.csv"
    rows = "".join(f"P{i};Paris;{i}\n" for i in range(CSV_ROWS_PER_SECTION + 10))
    p.write_text("name;city;age\nAlice;;30\n" + rows)
    doc = _load(p)
    assert doc.title == "staff"
    assert [s.heading for s in doc.sections] == ["rows 1-50", "rows 51-61"]
    first = doc.sections[0].text.split("\n\n")
    assert first[:2] == ["name: Alice\nage: 30", "name: P0\ncity: Paris\nage: 0"]
    assert len(first) == CSV_ROWS_PER_SECTION
    assert doc.sections[1].text.endswith("name: P59\ncity: Paris\nage: 59")


def test_json_is_rendered_as_key_paths(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text('{"title": "Config", "db": {"host": "pg", "ports": [5432, 5433]}, '
                 '"tags": [], "debug": false, "owners": [{"name": "Ana"}]}')
    doc = _load(p)
    assert doc.title == "Config"
    assert doc.text == ("title: Config\n\ndb.host: pg\ndb.ports[0]: 5432\ndb.ports[1]: 5433\n\n"
                        "tags: []\n\ndebug: false\n\nowners[0].name: Ana")


def test_json_array_keeps_records_apart(tmp_path: Path) -> None:
    p = tmp_path / "people.json"
    p.write_text('[{"name": "Ana", "role": "cto"}, {"name": "Bo"}]')
    assert _load(p).text == "[0].name: Ana\n[0].role: cto\n\n[1].name: Bo"


def test_jsonl_has_one_section_per_line(tmp_path: Path) -> None:
    p = tmp_path / "faq.jsonl"
    p.write_text('{"q": "Leave?", "a": "16 weeks"}\n\n{"q": "Pay?", "a": "monthly"}\n')
    doc = _load(p)
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("line 1", "q: Leave?\n\na: 16 weeks"), ("line 3", "q: Pay?\n\na: monthly")]


def test_malformed_jsonl_line_fails_the_file_naming_the_line(tmp_path: Path) -> None:
    p = tmp_path / "faq.jsonl"
    p.write_text('{"q": "ok"}\n{"q": "ok"}\n{"q": \n{"q": "ok"}\n')
    with pytest.raises(LoaderError, match="line 3 is not valid JSON") as info:
        _load(p)
    assert "\n" not in str(info.value)


def _corruptions(good: bytes, main_part: str) -> list[bytes]:
    return [
        b"PK\x03\x04 not really a zip",
        good[: len(good) // 2],
        replace_zip_member(good, main_part, b"<w:document><unclosed"),
        replace_zip_member(good, main_part, None),
        replace_zip_member(good, "[Content_Types].xml", None),
    ]


@pytest.mark.parametrize("case", range(5))
def test_corrupt_docx_raises_one_line_reason(tmp_path: Path, case: int) -> None:
    good = make_docx([("Normal", "text")])
    p = tmp_path / "broken.docx"
    p.write_bytes(_corruptions(good, "word/document.xml")[case])
    with pytest.raises(LoaderError, match="unreadable Word document") as info:
        _load(p)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", range(5))
def test_corrupt_pptx_raises_one_line_reason(tmp_path: Path, case: int) -> None:
    good = make_pptx([("Title", "body", "")])
    p = tmp_path / "broken.pptx"
    p.write_bytes(_corruptions(good, "ppt/slides/slide1.xml")[case])
    with pytest.raises(LoaderError, match="unreadable PowerPoint file") as info:
        _load(p)
    assert "\n" not in str(info.value)


def test_a_pptx_named_docx_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "deck.docx"
    p.write_bytes(make_pptx([("Title", "body", "")]))
    with pytest.raises(LoaderError, match="unreadable Word document"):
        _load(p)
