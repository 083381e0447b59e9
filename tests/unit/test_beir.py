import itertools
import json
from pathlib import Path

import pytest

from ingest.beir import load_beir_corpus
from verity.core.errors import LoaderError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"


def write_corpus(folder: Path, records: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


RECORDS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers fever."},
    {"_id": "d2", "title": "Ibuprofen", "text": "Ibuprofen reduces inflammation."},
    {"_id": "d3", "title": "Title only", "text": ""},
]


def test_records_become_documents(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "mini", RECORDS)
    docs = list(load_beir_corpus(tmp_path / "mini", fingerprint="f"))
    assert [(d.source, d.title) for d in docs] == [("d1", "Aspirin"), ("d2", "Ibuprofen"),
                                                    ("d3", "Title only")]
    assert [s.text for s in docs[0].sections] == ["Aspirin lowers fever."]
    assert docs[2].sections[0].text == "Title only"
    assert [d.content_hash for d in load_beir_corpus(corpus, fingerprint="f")] == [
        d.content_hash for d in docs]


def test_content_hash_covers_title_text_and_fingerprint(tmp_path: Path) -> None:
    base = next(load_beir_corpus(write_corpus(tmp_path / "a", RECORDS[:1]), fingerprint="f"))
    other_fp = next(load_beir_corpus(tmp_path / "a", fingerprint="g"))
    retitled = next(load_beir_corpus(
        write_corpus(tmp_path / "b", [{**RECORDS[0], "title": "ASA"}]), fingerprint="f"))
    edited = next(load_beir_corpus(
        write_corpus(tmp_path / "c", [{**RECORDS[0], "text": "Changed."}]), fingerprint="f"))
    assert len({base.content_hash, other_fp.content_hash, retitled.content_hash,
                edited.content_hash}) == 4


@pytest.mark.parametrize(("lines", "reason"), [
    ('{"_id": "a", "text": "x"}\n{"_id": \n', "line 2 is not valid JSON"),
    ('{"_id": "a", "text": "x"}\n\n{"title": "no id"}\n', 'line 3 is not a BEIR record with an "_id"'),
    ('["a"]\n', 'line 1 is not a BEIR record'),
])
def test_malformed_corpus_names_the_line(tmp_path: Path, lines: str, reason: str) -> None:
    (tmp_path / "corpus.jsonl").write_text(lines)
    with pytest.raises(LoaderError, match=reason) as info:
        list(load_beir_corpus(tmp_path, fingerprint=""))
    assert "\n" not in str(info.value)


def test_missing_corpus_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="no BEIR corpus at .*corpus.jsonl; pass a BEIR"):
        list(load_beir_corpus(tmp_path, fingerprint=""))


@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(),
                    reason=f"SciFact is not at {SCIFACT} (../shared/datasets/scifact from the repo root)")
def test_first_50_scifact_records() -> None:
    docs = list(itertools.islice(load_beir_corpus(SCIFACT, fingerprint=""), 50))
    with (SCIFACT / "corpus.jsonl").open() as f:
        expected = [json.loads(line) for line in itertools.islice(f, 50)]
    assert [(d.source, d.title) for d in docs] == [(r["_id"], r["title"]) for r in expected]
    assert docs[0].source == "4983"
    assert docs[0].title.startswith("Microstructural development of human newborn cerebral white")
    assert len({d.source for d in docs}) == 50
    assert all(d.sections[0].text == r["text"] for d, r in zip(docs, expected, strict=True))
