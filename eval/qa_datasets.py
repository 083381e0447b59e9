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
* RGB (``rgb/``, Chen et al. AAAI 2024; Chinese): ``zh_refine.json`` (300
  questions) or ``zh_int.json`` (100 information-integration questions), JSON
  Lines of ``{id, query, answer, positive, negative}``. Every question's
  positive and noisy passages are pooled into one corpus (open retrieval rather
  than RGB's fixed five passages per question); an answer is correct when it
  contains every element of ``answer`` (RGB's ``checkanswer``), and a source is
  relevant when it is one of the question's positive passages.
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
    """One question with its gold answers.

    ``answer_groups``, when given, replaces alias matching: every group must be
    matched by one of its aliases (RGB). ``relevant_passages`` are ids of corpus
    passages known to hold the answer (context precision uses them; without them
    a source is relevant when it contains a gold answer). ``passage_ids`` are the
    corpus passages that belong to this question alone: a run limited to some
    questions ingests only theirs.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    unanswerable: bool = False
    answer_groups: tuple[tuple[str, ...], ...] = ()
    relevant_passages: tuple[str, ...] = ()
    passage_ids: tuple[str, ...] = ()


@dataclass
class QADataset:
    name: str
    examples: list[QAExample]
    corpus: list[Passage]
    files: list[Path] = field(default_factory=list)
    replay: tuple[Path, Path] | None = None  # (questions.jsonl, knowledge.txt)

    def limited(self, n: int | None, *, skip: int = 0) -> QADataset:
        """The questions after the first ``skip``, at most ``n`` of them, and their passages."""
        if n is None and not skip:
            return self
        examples = self.examples[skip:None if n is None else skip + n]
        corpus = self.corpus
        if any(e.passage_ids for e in self.examples):
            keep = {pid for e in examples for pid in e.passage_ids}
            corpus = [p for p in corpus if p.id in keep]
        return QADataset(self.name, examples, corpus, self.files, self.replay)

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
    if (path / "zh_refine.json").is_file():
        return load_rgb(path / "zh_refine.json")
    if path.is_file() and path.name in RGB_FILES:
        return load_rgb(path)
    if path.is_file() and path.suffix == ".jsonl":
        return load_jsonl(path)
    raise DatasetError(
        f"{path}: not a QA dataset; expected a JSONL file, a popqa_crag folder "
        "(popqa_longtail_w_gs_first100.jsonl), a squad_v2 folder (queries.json, ground_truth.json) "
        f"or an RGB folder or file ({', '.join(RGB_FILES)})")


def load_popqa_crag(path: Path) -> QADataset:
    file = path / "popqa_longtail_w_gs_first100.jsonl"
    examples: list[QAExample] = []
    corpus: dict[str, Passage] = {}
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
    examples: list[QAExample] = []
    corpus: dict[str, Passage] = {}
    for q in queries:
        gold = truth[q["id"]]
        answers = tuple(a for a in gold["answers"] if a)
        pid = hashlib.sha256(q["context"].encode()).hexdigest()[:16]
        impossible = bool(gold["is_impossible"])
        examples.append(QAExample(q["id"], q["question"], answers, impossible,
                                  relevant_passages=() if impossible else (pid,)))
        corpus.setdefault(pid, Passage(pid, "", q["context"]))
    return QADataset("squad_v2", examples, list(corpus.values()),
                     [path / "queries.json", path / "ground_truth.json"])


RGB_FILES = ("zh_refine.json", "zh_int.json")


def load_rgb(file: Path) -> QADataset:
    """An RGB file: JSON Lines with ``query``, ``answer``, ``positive`` and ``negative``.

    ``zh_int.json`` nests one passage list per sub-answer in ``positive``; they
    are flattened. Passage ids are content hashes, so a passage shared by two
    questions is ingested once.
    """
    examples: list[QAExample] = []
    corpus: dict[str, Passage] = {}
    for n, record in _json_lines(file):
        missing = [k for k in ("id", "query", "answer", "positive", "negative") if k not in record]
        if missing:
            raise DatasetError(f"{file}:{n}: not an RGB record, missing {', '.join(missing)}")
        groups = tuple((a,) if isinstance(a, str) else tuple(a) for a in record["answer"])
        positive = [_passage(t) for t in _flatten(record["positive"])]
        negative = [_passage(t) for t in _flatten(record["negative"])]
        for p in positive + negative:
            corpus.setdefault(p.id, p)
        examples.append(QAExample(
            id=str(record["id"]), question=record["query"],
            answers=tuple(a for g in groups for a in g), answer_groups=groups,
            relevant_passages=tuple(dict.fromkeys(p.id for p in positive)),
            passage_ids=tuple(dict.fromkeys(p.id for p in positive + negative))))
    return QADataset(f"rgb_{file.stem}", examples, list(corpus.values()), [file])


def _flatten(items: list) -> list[str]:  # type: ignore[type-arg]
    out: list[str] = []
    for item in items:
        out.extend(_flatten(item) if isinstance(item, list) else [str(item)])
    return [t for t in out if t.strip()]


def _passage(text: str) -> Passage:
    return Passage(hashlib.sha256(text.encode()).hexdigest()[:16], "", text)


def load_jsonl(file: Path) -> QADataset:
    examples: list[QAExample] = []
    corpus: dict[str, Passage] = {}
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


def _json_lines(file: Path) -> list[tuple[int, dict]]:  # type: ignore[type-arg]
    """``(line number, record)`` for every non-blank line of a JSON-lines file."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DatasetError(f"cannot read {file}: {e.strerror}") from e
    out = []
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except ValueError as e:
                raise DatasetError(f"{file}:{n}: not JSON ({e})") from e
    return out


def _jsonl(file: Path) -> list[dict]:  # type: ignore[type-arg]
    """QA records: JSON lines that each have a ``question``."""
    records = _json_lines(file)
    for n, record in records:
        if "question" not in record:
            raise DatasetError(f"{file}:{n}: no 'question' field")
    return [record for _, record in records]
