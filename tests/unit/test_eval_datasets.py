"""eval/datasets.py: BEIR files read in place, clear errors, a stable hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.datasets import DatasetError, dataset_hash, iter_corpus, load_beir
from tests.helpers import write_beir

pytestmark = pytest.mark.unit

SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "scifact"


def test_reads_judged_queries_in_qrels_order(tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "tiny"))
    assert data.name == "tiny" and data.corpus_size == 2
    assert list(data.queries) == ["q2", "q1"] and data.queries["q1"] == "what purrs"
    assert data.qrels == {"q2": {"d2": 1}, "q1": {"d1": 2, "d2": 0}}
    assert [r.id for r in iter_corpus(data.path)] == ["d1", "d2"]
    assert data.limited(1).qrels == {"q2": {"d2": 1}} and data.limited(None) is data


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    root = write_beir(tmp_path / "tiny")
    (root / missing).unlink()
    with pytest.raises(DatasetError, match=f"missing {missing}"):
        load_beir(root)


def test_missing_folder_and_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no BEIR dataset folder"):
        load_beir(tmp_path / "absent")
    with pytest.raises(DatasetError, match="missing qrels/dev.tsv"):
        load_beir(write_beir(tmp_path / "tiny"), split="dev")


@pytest.mark.parametrize(("qrels", "needle"), [
    ("q1\td1\t1\n", "header"),
    ("query-id\tcorpus-id\tscore\nq1 d1 1\n", "test.tsv:2"),
    ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "integer score"),
    ("query-id\tcorpus-id\tscore\nq9\td1\t1\n", "q9"),
])
def test_malformed_qrels(tmp_path: Path, qrels: str, needle: str) -> None:
    with pytest.raises(DatasetError, match=needle):
        load_beir(write_beir(tmp_path / "tiny", qrels=qrels))


def test_malformed_corpus_line_is_located(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "tiny")
    with (root / "corpus.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(DatasetError, match="corpus.jsonl:3: not valid JSON"):
        load_beir(root)


def test_hash_covers_every_file_and_is_stable(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "tiny")
    first = dataset_hash(root)
    assert first == dataset_hash(root) == load_beir(root).sha256
    with (root / "qrels" / "test.tsv").open("a") as f:
        f.write("q2\td1\t1\n")
    assert dataset_hash(root) != first


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="the shared SciFact copy is not on this machine")
def test_scifact_test_split() -> None:
    data = load_beir(SCIFACT)
    assert (len(data.queries), data.corpus_size) == (300, 5183)
    assert sum(len(j) for j in data.qrels.values()) == 339
