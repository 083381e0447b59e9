from pathlib import Path
from typing import Any

import pytest

from ingest.attributes import DocumentAttributes, apply_attributes, clean_groups, is_sidecar
from ingest.loaders import load_file
from verity.core.errors import LoaderError
from verity.core.types import Document, Section

pytestmark = pytest.mark.unit


def _doc(**fields: Any) -> Document:
    return Document(source="a.txt", title="a", sections=(Section(text="x"),), content_hash="h",
                    **fields)


def test_sidecar_is_applied_to_its_file(tmp_path: Path) -> None:
    (tmp_path / "policy.md").write_text("# Policy\nText.\n")
    (tmp_path / "policy.md.meta.json").write_text(
        '{"metadata": {"owner": "hr", "year": 2024}, "groups": ["legal", "hr", "hr"]}')
    doc = load_file(tmp_path / "policy.md", source="policy.md", max_bytes=10**6)
    assert doc.metadata == {"owner": "hr", "year": 2024}
    assert doc.acl_groups == ("hr", "legal")


@pytest.mark.parametrize(("sidecar", "reason"), [
    ("{not json", "not valid JSON (line 1"),
    ('["hr"]', "expected an object"),
    ('{"group": ["hr"]}', "unknown key 'group'"),
    ('{"metadata": ["x"]}', '"metadata" must be an object'),
    ('{"groups": "hr"}', '"groups" must be a list'),
    ('{"groups": ["hr", ""]}', "non-blank strings"),
    ('{"groups": [1]}', "non-blank strings"),
])
def test_malformed_sidecar_fails_the_file_with_one_line(
    tmp_path: Path, sidecar: str, reason: str
) -> None:
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "a.txt.meta.json").write_text(sidecar)
    with pytest.raises(LoaderError, match="sidecar a.txt.meta.json") as info:
        load_file(tmp_path / "a.txt", source="a.txt", max_bytes=10**6)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_sidecar_names() -> None:
    assert is_sidecar("kb/report.pdf.meta.json") and is_sidecar("X.META.JSON")
    assert not is_sidecar("kb/meta.jsonl") and not is_sidecar("kb/data.json")


def test_run_attributes_merge_with_the_documents_own() -> None:
    own = _doc(metadata={"owner": "hr", "year": 2024}, acl_groups=("hr",))
    run = DocumentAttributes(metadata={"owner": "ops", "source": "wiki"}, groups=("legal", "hr"))
    merged = apply_attributes(own, run)
    assert merged.metadata == {"owner": "hr", "year": 2024, "source": "wiki"}
    assert merged.acl_groups == ("hr", "legal")


def test_content_hash_covers_metadata_and_groups() -> None:
    plain = _doc()
    assert apply_attributes(plain, DocumentAttributes()) == plain
    hashes = {
        apply_attributes(plain, DocumentAttributes(groups=("hr",))).content_hash,
        apply_attributes(plain, DocumentAttributes(groups=("legal",))).content_hash,
        apply_attributes(plain, DocumentAttributes(metadata={"k": "v"})).content_hash,
        apply_attributes(_doc(metadata={"k": "w"}), DocumentAttributes()).content_hash,
        plain.content_hash,
    }
    assert len(hashes) == 5
    again = apply_attributes(plain, DocumentAttributes(groups=("hr",)))
    assert again.content_hash == apply_attributes(plain, DocumentAttributes(groups=("hr",))).content_hash


def test_clean_groups() -> None:
    assert clean_groups([" hr", "legal", "hr "]) == ("hr", "legal")
    with pytest.raises(ValueError, match="non-blank"):
        clean_groups(["  "])
