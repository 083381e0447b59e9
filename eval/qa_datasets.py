"""Question-answering datasets for ``verity eval qa``, read in place.

Every adapter yields :class:`QAExample`s and, where the dataset ships its own
passages, the pooled corpus to ingest (``Passage`` records with stable ids).

* Generic JSONL: one ``{"question", "answers": [...], "contexts"?: [...],
  "unanswerable"?: bool, "id"?}`` per line.
* PopQA with CRAG's retrieved passages (``popqa_crag/``): the first 100
  questions with 25 Contriever passages each, pooled into one corpus; the
  CRAG paper's web-search results serve the replay connector.
* SQuAD v2 dev 500 (``squad_v2_dev500/``): 411 paragraphs pooled; 258
  questions are unanswerable and should be abstained on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from eval.datasets import DatasetError


@dataclass(frozen=True, slots=True)
class Passage:
    id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class QAExample:
    id: str
    question: str
    answers: tuple[str, ...]
    unanswerable: bool = False


@dataclass
class QADataset:
    name: str
    examples: list[QAExample]
    corpus: list[Passage]
    files: list[Path] = field(default_factory=list)
    replay: tuple[Path, Path] | None = None  # (questions.jsonl, knowledge.txt)

    def limited(self, n: int | None) -> QADataset:
        if n is None:
            return self
        return QADataset(self.name, self.examples[:n], self.corpus, self.files, self.replay)

    def hash(self) -> str:
        digest = hashlib.sha256()
        for f in sorted(self.files):
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
        return digest.hexdigest()


def load_qa(path: Path) -> QADataset:
    """Recognise the dataset at ``path`` by its files and load it.

    Raises:
        DatasetError: nothing recognisable there, or a malformed file.
    """
    if (path / "popqa_longtail_w_gs_first100.jsonl").is_file():
        return load_popqa_crag(path)
    if (path / "queries.json").is_file() and (path / "ground_truth.json").is_file():
        return load_squad_v2(path)
    if path.is_file() and path.suffix == ".jsonl":
        return load_jsonl(path)
    raise DatasetError(
        f"{path}: not a QA dataset; expected a JSONL file, a popqa_crag folder "
        "(popqa_longtail_w_gs_first100.jsonl) or a squad_v2 folder (queries.json, ground_truth.json)")


def load_popqa_crag(path: Path) -> QADataset:
    file = path / "popqa_longtail_w_gs_first100.jsonl"
    examples, corpus = [], {}
    for i, record in enumerate(_jsonl(file)):
        examples.append(QAExample(id=str(i), question=record["question"],
                                  answers=tuple(record["answers"])))
        for ctx in record.get("ctxs", []):
            pid = str(ctx.get("id") or hashlib.sha256(ctx["text"].encode()).hexdigest()[:16])
            corpus.setdefault(pid, Passage(pid, ctx.get("title", ""), ctx["text"]))
    replay = (path / "popqa_longtail.jsonl", path / "crag_knowledge" / "ref_incorrect.txt")
    return QADataset("popqa_crag", examples, list(corpus.values()), [file],
                     replay if all(p.is_file() for p in replay) else None)


def load_squad_v2(path: Path) -> QADataset:
    try:
        queries = json.loads((path / "queries.json").read_text(encoding="utf-8"))["queries"]
        truth = json.loads((path / "ground_truth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{path}: cannot read SQuAD v2 files: {e}") from e
    examples, corpus = [], {}
    for q in queries:
        gold = truth[q["id"]]
        answers = tuple(a for a in gold["answers"] if a)
        examples.append(QAExample(q["id"], q["question"], answers, bool(gold["is_impossible"])))
        pid = hashlib.sha256(q["context"].encode()).hexdigest()[:16]
        corpus.setdefault(pid, Passage(pid, "", q["context"]))
    return QADataset("squad_v2", examples, list(corpus.values()),
                     [path / "queries.json", path / "ground_truth.json"])


def load_jsonl(file: Path) -> QADataset:
    examples, corpus = [], {}
    for i, record in enumerate(_jsonl(file)):
        examples.append(QAExample(id=str(record.get("id", i)), question=record["question"],
                                  answers=tuple(record.get("answers", [])),
                                  unanswerable=bool(record.get("unanswerable", False))))
        for j, ctx in enumerate(record.get("contexts", [])):
            text = ctx if isinstance(ctx, str) else ctx.get("text", "")
            title = "" if isinstance(ctx, str) else ctx.get("title", "")
            pid = hashlib.sha256(text.encode()).hexdigest()[:16] or f"{i}-{j}"
            corpus.setdefault(pid, Passage(pid, title, text))
    return QADataset(file.stem, examples, list(corpus.values()), [file])


def _jsonl(file: Path) -> list[dict]:  # type: ignore[type-arg]
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DatasetError(f"cannot read {file}: {e.strerror}") from e
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DatasetError(f"{file}:{n}: not JSON ({e})") from e
        if "question" not in record:
            raise DatasetError(f"{file}:{n}: no 'question' field")
        out.append(record)
    return out
