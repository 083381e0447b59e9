"""Benchmark datasets in BEIR's format, read in place.

A BEIR dataset is a folder with ``corpus.jsonl`` (``{"_id", "title",
"text"}`` a line), ``queries.jsonl`` (``{"_id", "text"}`` a line) and
``qrels/<split>.tsv`` (tab-separated ``query-id corpus-id score`` with that
header). Thakur et al., "BEIR: A Heterogeneous Benchmark for Zero-shot
Evaluation of Information Retrieval Models", NeurIPS 2021.

Datasets are read where they lie (never copied), and a sha256 over exactly
the bytes read identifies the data in every report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verity.core.errors import RagError

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_HEADER = ("query-id", "corpus-id", "score")


class DatasetError(RagError):
    """A benchmark dataset is missing a file or holds a malformed record."""


@dataclass(frozen=True, slots=True)
class CorpusRecord:
    """One BEIR corpus document."""

    id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class BeirDataset:
    """The queries and judgments of one split, plus where the corpus is.

    Example:
        >>> data = load_beir(Path("../shared/datasets/scifact"))
        >>> len(data.queries), data.sha256[:12]
        (300, '…')
    """

    name: str
    path: Path
    split: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus_size: int
    sha256: str

    @property
    def corpus_path(self) -> Path:
        return self.path / CORPUS_FILE

    def limited(self, n_queries: int | None) -> BeirDataset:
        """The first ``n_queries`` queries in qrels order (all of them for None)."""
        if n_queries is None or n_queries >= len(self.qrels):
            return self
        keep = list(self.qrels)[:n_queries]
        return BeirDataset(self.name, self.path, self.split, {q: self.queries[q] for q in keep},
                           {q: self.qrels[q] for q in keep}, self.corpus_size, self.sha256)


def beir_files(path: Path, *, split: str = "test") -> list[Path]:
    """The files a split consists of, in the order they are hashed.

    Raises:
        DatasetError: the folder or one of the files does not exist.
    """
    if not path.is_dir():
        raise DatasetError(f"no BEIR dataset folder at {path}; pass the folder that holds "
                           f"{CORPUS_FILE}, {QUERIES_FILE} and qrels/{split}.tsv")
    files = [path / CORPUS_FILE, path / QUERIES_FILE, path / "qrels" / f"{split}.tsv"]
    for file in files:
        if not file.is_file():
            raise DatasetError(f"BEIR dataset at {path} is missing {file.relative_to(path)} "
                               f"(expected {CORPUS_FILE}, {QUERIES_FILE} and qrels/{split}.tsv)")
    return files


def dataset_hash(path: Path, *, split: str = "test") -> str:
    """sha256 over the split's files: each file's relative name, size and bytes, in order.

    Raises:
        DatasetError: a file is missing.
    """
    digest = hashlib.sha256()
    for file in beir_files(path, split=split):
        digest.update(_framed(file, path))
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _framed(file: Path, root: Path) -> bytes:
    return f"{file.relative_to(root).as_posix()}\x00{file.stat().st_size}\x00".encode()


def load_beir(path: Path, *, split: str = "test") -> BeirDataset:
    """Read a split's queries and judgments, count the corpus and hash all three files.

    Only queries that have judgments in the split are kept (as BEIR's loader does).

    Raises:
        DatasetError: a file is missing, a line is malformed, or a judged query
            has no text in ``queries.jsonl``.
    """
    files = beir_files(path, split=split)
    qrels = read_qrels(files[2])
    all_queries = read_queries(files[1])
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise DatasetError(f"{files[2]} judges queries missing from {files[1].name}: "
                           f"{', '.join(missing[:5])}")
    corpus_size = sum(1 for _ in iter_corpus(path))
    return BeirDataset(name=path.resolve().name, path=path, split=split,
                       queries={qid: all_queries[qid] for qid in qrels}, qrels=qrels,
                       corpus_size=corpus_size, sha256=dataset_hash(path, split=split))


def iter_corpus(path: Path) -> Iterator[CorpusRecord]:
    """The corpus documents of the dataset at ``path`` (a folder or ``corpus.jsonl`` itself).

    Raises:
        DatasetError: the file is missing or a line is not a BEIR record.
    """
    file = path if path.is_file() else path / CORPUS_FILE
    if not file.is_file():
        raise DatasetError(f"BEIR dataset at {path} is missing {CORPUS_FILE}")
    for number, record in _jsonl(file):
        yield CorpusRecord(id=_field(record, "_id", file, number),
                           title=str(record.get("title") or ""), text=str(record.get("text") or ""))


def read_queries(file: Path) -> dict[str, str]:
    """``{query_id: text}`` from a ``queries.jsonl``.

    Raises:
        DatasetError: a line is not a BEIR query record.
    """
    return {_field(r, "_id", file, n): _field(r, "text", file, n) for n, r in _jsonl(file)}


def read_qrels(file: Path) -> dict[str, dict[str, int]]:
    """``{query_id: {corpus_id: grade}}`` from a BEIR qrels TSV, in file order.

    Raises:
        DatasetError: the header is wrong or a line is not ``query-id<TAB>corpus-id<TAB>score``.
    """
    qrels: dict[str, dict[str, int]] = {}
    lines = file.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].strip().split("\t")) != QRELS_HEADER:
        raise DatasetError(f"{file} must start with the header line "
                           f"{chr(9).join(QRELS_HEADER)!r}")
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 3 or not _is_int(parts[2]):
            raise DatasetError(f"{file}:{number}: expected query-id, corpus-id and an integer "
                               f"score separated by tabs, got {line[:80]!r}")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _jsonl(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with file.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{file}:{number}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise DatasetError(f"{file}:{number}: expected a JSON object")
            yield number, record


def _field(record: dict[str, Any], key: str, file: Path, number: int) -> str:
    value = record.get(key)
    if value is None or (key == "_id" and str(value) == ""):
        raise DatasetError(f"{file}:{number}: record has no {key!r}")
    return str(value)
