import json
from pathlib import Path

import pytest

from eval.datasets import DatasetError
from eval.qa import run, score, summarize
from eval.qa_datasets import QADataset, QAExample, load_qa
from verity.core.types import Answer, AnswerStatus, Citation

pytestmark = pytest.mark.unit

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def _answer(text: str, status: AnswerStatus = "answered", cited: tuple[str, ...] = ("c1",),
            given: tuple[str, ...] = ("c1", "c2"), invalid: tuple[int, ...] = ()) -> Answer:
    sources = tuple(Citation(n=i, document=f"d{i}", chunk_id=c, text="t")
                    for i, c in enumerate(given, 1))
    citations = tuple(s for s in sources if s.chunk_id in cited)
    return Answer(text, status, citations, sources, invalid)


def test_scoring_and_summary() -> None:
    answerable = QAExample("1", "Who?", ("Ada Lovelace", "Lovelace"))
    unanswerable = QAExample("2", "When?", (), unanswerable=True)
    outcomes = [
        score(answerable, "rag", _answer("It was Ada Lovelace [1]."), 10),
        score(answerable, "rag", _answer("No idea", status="abstained", cited=()), 20),
        score(unanswerable, "rag", _answer("The documents don't contain this.", "abstained", ()), 30),
        score(unanswerable, "rag", _answer("In 1900 [3].", cited=("zz",), invalid=(3,)), 40),
    ]
    assert outcomes[0].contains == 1.0 and outcomes[0].citations_valid
    assert not outcomes[3].citations_valid
    s = summarize(outcomes)
    assert s["accuracy"] == 0.5 and s["false_abstain"] == 0.5
    assert s["abstain_unanswerable"] == 0.5 and s["abstain_precision"] == 0.5
    assert s["citation_validity"] == 0.75


def test_run_resumes_from_its_cache(tmp_path: Path) -> None:
    data = QADataset("toy", [QAExample(str(i), f"q{i}", ("a",)) for i in range(3)], [])
    calls: list[str] = []

    def answer(q: str) -> Answer:
        calls.append(q)
        return _answer("a [1]")

    run(data, {"rag": answer}, cache_dir=tmp_path)
    again = run(data, {"rag": answer}, cache_dir=tmp_path)
    assert calls == ["q0", "q1", "q2"] and [o.id for o in again["rag"]] == ["0", "1", "2"]


def test_generic_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "my.jsonl"
    f.write_text(json.dumps({"question": "Q?", "answers": ["A"], "contexts": ["ctx text"]}) + "\n"
                 + json.dumps({"question": "U?", "unanswerable": True}) + "\n")
    data = load_qa(f)
    assert [e.unanswerable for e in data.examples] == [False, True]
    assert [p.text for p in data.corpus] == ["ctx text"]
    (tmp_path / "bad.jsonl").write_text('{"answers": []}\n')
    with pytest.raises(DatasetError, match="question"):
        load_qa(tmp_path / "bad.jsonl")


@pytest.mark.skipif(not (SHARED / "popqa_crag").is_dir(), reason="shared PopQA data not present")
def test_popqa_adapter_pools_the_retrieved_passages() -> None:
    data = load_qa(SHARED / "popqa_crag")
    assert len(data.examples) == 100 and data.replay is not None
    assert 2000 <= len(data.corpus) <= 2500
    assert "politician" in data.examples[0].answers


@pytest.mark.skipif(not (SHARED / "squad_v2_dev500").is_dir(), reason="shared SQuAD data not present")
def test_squad_adapter_marks_unanswerable_questions() -> None:
    data = load_qa(SHARED / "squad_v2_dev500")
    assert len(data.examples) == 500 and sum(e.unanswerable for e in data.examples) == 258
    assert len(data.corpus) == 411


def test_outages_are_not_cached(tmp_path: Path) -> None:
    data = QADataset("toy", [QAExample("0", "q0", ("a",))], [])
    statuses: list[AnswerStatus] = ["generation_unavailable", "answered"]

    def answer(q: str) -> Answer:
        return _answer("a [1]", status=statuses.pop(0), cited=())

    first = run(data, {"rag": answer}, cache_dir=tmp_path)
    second = run(data, {"rag": answer}, cache_dir=tmp_path)
    assert first["rag"][0].status == "generation_unavailable"
    assert second["rag"][0].status == "answered"


def test_citation_validity_checks_numbers_chunks_and_markers() -> None:
    example = QAExample("1", "Who?", ("Ada",))
    good = _answer("Ada [1].")
    sources = good.sources
    swapped = Answer("Ada [1].", "answered", (Citation(n=1, document="d2", chunk_id="c2", text="t"),),
                     sources)
    stray = Answer("Ada [1] [5].", "answered", good.citations, sources)
    cleaned = Answer("Ada [1].", "answered", good.citations, sources, (7,))
    assert score(example, "rag", good, 1).citations_valid
    assert not score(example, "rag", swapped, 1).citations_valid  # [1] is not chunk c2
    assert not score(example, "rag", stray, 1).citations_valid  # [5] was never given
    outcome = score(example, "rag", cleaned, 1)
    assert outcome.citations_valid and outcome.invalid_markers_removed == 1
    assert summarize([outcome])["answers_with_invalid_markers_removed"] == 1.0
