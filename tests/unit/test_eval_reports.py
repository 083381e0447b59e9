"""Run comparison, gates, the configuration matrix, faithfulness judging and the new metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.compare import (
    Gate,
    GateError,
    RunError,
    check_gates,
    compare_runs,
    load_run,
)
from eval.faithfulness import judge_outcome, sentences, statements
from eval.matrix import MatrixError, load_matrix, parse_configs
from eval.metrics import (
    abstention_precision,
    abstention_recall,
    contains_answer,
    contains_answer_groups,
    context_precision,
    faithfulness,
)
from eval.outcomes import Outcome
from eval.qa import run, score, summarize, write_reports
from eval.qa_datasets import QADataset, QAExample, load_qa
from eval.stats import mean_ci, paired_rows
from verity.cli.main import app
from verity.core.types import Answer, Citation

pytestmark = pytest.mark.unit

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
SOURCES = (Citation(1, "paris.txt", "c1", "Paris is the capital of France."),
           Citation(2, "rome.txt", "c2", "Rome is the capital of Italy."))


# --- metrics -------------------------------------------------------------------------------


def test_context_precision_is_average_precision_over_the_given_contexts() -> None:
    assert context_precision([True, False, True]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert context_precision([False, True]) == 0.5
    assert context_precision([False, False]) == 0.0 and context_precision([]) == 0.0


def test_abstention_precision_and_recall() -> None:
    abstained = [True, True, False, False]
    unanswerable = [True, False, True, False]
    assert abstention_precision(abstained, unanswerable) == 0.5
    assert abstention_recall(abstained, unanswerable) == 0.5
    assert abstention_precision([False], [True]) != abstention_precision([False], [True])  # NaN


def test_rgb_answer_groups_need_every_group() -> None:
    assert contains_answer_groups("东盟和中国", [["东盟"], ["中国"]]) == 1.0
    assert contains_answer_groups("东盟", [["东盟"], ["中国"]]) == 0.0
    assert contains_answer_groups("约131万人", [["1313851", "131万"]]) == 1.0
    with pytest.raises(ValueError, match="group"):
        contains_answer_groups("x", [[]])


def test_cjk_aliases_match_as_substrings_latin_ones_as_tokens() -> None:
    assert contains_answer("事故造成至少12人死亡", "12人") == 1.0
    assert contains_answer("in 1945", "4") == 0.0


def test_faithfulness_is_the_supported_share() -> None:
    assert faithfulness([True, False, True, True]) == 0.75
    assert faithfulness([]) != faithfulness([])  # NaN: nothing to judge


# --- faithfulness judging ------------------------------------------------------------------


class WordOverlapJudge:
    """Supported when every content word of the statement is in the source: deterministic."""

    name = "word-overlap"

    def supported(self, statement: str, source: str) -> bool:
        words = [w.strip(".,").lower() for w in statement.split() if len(w) > 3]
        return all(w in source.lower() for w in words)


def test_sentences_split_latin_and_cjk() -> None:
    assert sentences("Paris is big [1]. Rome too! Why?") == ["Paris is big [1].", "Rome too!", "Why?"]
    assert sentences("事故造成12人死亡。十四人受伤。") == ["事故造成12人死亡。", "十四人受伤。"]


def test_sentences_end_as_the_citation_check_ends_them() -> None:
    answer = "Dr. J. Smith was a priest [1]. He was born in 1820.[2] [1]"
    assert sentences(answer) == ["Dr. J. Smith was a priest [1].", "He was born in 1820.[2]", "[1]"]
    sources = [{"n": 1, "text": "Smith was a priest."}, {"n": 2, "text": "Smith was born in 1820."}]
    assert statements(answer, sources) == [("Dr. J. Smith was a priest .", "Smith was a priest."),
                                           ("He was born in 1820.", "Smith was born in 1820.")]


def test_each_sentence_is_judged_against_what_it_cites() -> None:
    sources = [{"n": s.n, "document": s.document, "text": s.text} for s in SOURCES]
    pairs = statements("Paris is the capital of France [1]. Rome is in Italy [2]. [1]", sources)
    assert pairs == [("Paris is the capital of France .", SOURCES[0].text),
                     ("Rome is in Italy .", SOURCES[1].text)]
    example = QAExample("0", "capital of France?", ("Paris",))
    answer = Answer("Paris is the capital of France [1]. Paris is the capital of Italy [1].",
                    "answered", SOURCES[:1], SOURCES)
    judged = judge_outcome(score(example, "rag", answer, 1.0), WordOverlapJudge())
    assert judged.supported == (True, False) and judged.faithfulness == 0.5
    assert judged.judge == "word-overlap"
    abstained = score(example, "rag", Answer("No.", "abstained", (), SOURCES), 1.0)
    assert judge_outcome(abstained, WordOverlapJudge()).faithfulness is None


def test_cached_answers_are_judged_again_only_by_a_new_judge(tmp_path: Path) -> None:
    data = QADataset("toy", [QAExample("0", "capital of France?", ("Paris",))], [])
    calls: list[str] = []

    def answer(q: str) -> Answer:
        calls.append(q)
        return Answer("Paris is the capital of France [1].", "answered", SOURCES[:1], SOURCES)

    first = run(data, {"rag": answer}, cache_dir=tmp_path)["rag"][0]
    judged = run(data, {"rag": answer}, cache_dir=tmp_path, judge=WordOverlapJudge())["rag"][0]
    again = run(data, {"rag": answer}, cache_dir=tmp_path, judge=WordOverlapJudge())["rag"][0]
    assert calls == ["capital of France?"]
    assert first.faithfulness is None and judged.faithfulness == again.faithfulness == 1.0


# --- QA scoring and summary ----------------------------------------------------------------


def test_context_relevance_uses_known_passages_or_the_gold_answer() -> None:
    answer = Answer("Paris [1].", "answered", SOURCES[:1], SOURCES)
    by_answer = score(QAExample("0", "q", ("Paris",)), "rag", answer, 1.0)
    by_passage = score(QAExample("0", "q", ("Paris",), relevant_passages=("rome.txt",)), "rag",
                       answer, 1.0)
    assert by_answer.context_relevant == (True, False)
    assert by_passage.context_relevant == (False, True)
    summary = summarize([by_answer, by_passage])
    assert summary["context_precision"] == pytest.approx((1.0 + 0.5) / 2)


def test_summary_has_stage_latencies_and_abstention_recall() -> None:
    example = QAExample("0", "q", (), unanswerable=True)
    outcomes = [score(example, "rag", Answer("No.", "abstained", (), SOURCES,
                                             timings={"retrieve_ms": float(ms)}), float(ms))
                for ms in (10, 20, 30)]
    s = summarize(outcomes)
    assert s["retrieve_p50_ms"] == 20.0 and s["abstain_recall"] == s["abstain_unanswerable"] == 1.0
    assert s["abstain_precision"] == 1.0


def test_rgb_adapter_reads_a_generated_file(tmp_path: Path) -> None:
    f = tmp_path / "zh_int.json"
    f.write_text(json.dumps({"id": 7, "query": "问题", "answer": [["一", "1"], "二"],
                             "positive": [["正一"], ["正二"]], "negative": ["负"]},
                            ensure_ascii=False) + "\n", encoding="utf-8")
    data = load_qa(f)
    (example,) = data.examples
    assert data.name == "rgb_zh_int" and example.answer_groups == (("一", "1"), ("二",))
    assert len(example.relevant_passages) == 2 and len(data.corpus) == 3


@pytest.mark.skipif(not (SHARED / "rgb").is_dir(), reason="shared RGB data not present")
def test_rgb_adapter_on_the_shared_set_limits_its_corpus() -> None:
    data = load_qa(SHARED / "rgb")
    assert data.name == "rgb_zh_refine" and len(data.examples) == 300
    small = data.limited(2)
    assert {p.id for p in small.corpus} == {pid for e in small.examples for pid in e.passage_ids}
    assert small.examples[0].answer_groups == (("12人",),)
    later = data.limited(2, skip=2)  # e.g. past the questions a threshold was fitted on
    assert [e.id for e in later.examples] == [e.id for e in data.examples[2:4]]
    assert {p.id for p in later.corpus} == {pid for e in later.examples for pid in e.passage_ids}
    assert len(data.limited(None, skip=299).examples) == 1


# --- matrix --------------------------------------------------------------------------------


def test_matrix_file_and_presets(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("configs:\n  - name: rag\n  - name: crag-k3\n    crag: true\n    top_k: 3\n"
                 "  - name: rag-c128\n    chunk_tokens: 128\n    rerank: none\n")
    configs = load_matrix(f)
    assert [c.name for c in configs] == ["rag", "crag-k3", "rag-c128"]
    assert configs[1].changes() == {"crag": True, "top_k": 3}
    assert configs[0].fingerprint() != configs[1].fingerprint()
    assert [c.name for c in parse_configs("rag, crag")] == ["rag", "crag"]


@pytest.mark.parametrize(("text", "needle"), [
    ("configs:\n  - name: a\n    topk: 3\n", "entry 1 (a): topk: unknown key; the keys are name"),
    ("configs:\n  - name: a\n  - name: a\n", "repeat"),
    ("configs:\n  - name: a\n    top_k: 0\n", "top_k"),
    ("configs: [", "not valid YAML"),
    ("configs: []\n", "non-empty list"),
    ("configs:\n  - name: 'a b'\n", "bad name"),
])
def test_bad_matrix_files_are_refused_with_the_entry_named(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(text)
    with pytest.raises(MatrixError, match=re.escape(needle)):
        load_matrix(f)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(MatrixError, match="--matrix"):
        parse_configs("rag,hyde")


# --- comparison and gates ------------------------------------------------------------------


def _qa_run(tmp_path: Path, name: str, correct: list[bool]) -> Path:
    examples = [QAExample(str(i), f"q{i}", ("Paris",)) for i in range(len(correct))]
    results = {"rag": [score(e, "rag", Answer("Paris [1]." if ok else "Rome [2].", "answered",
                                              SOURCES[:1] if ok else SOURCES[1:], SOURCES), 5.0)
                       for e, ok in zip(examples, correct, strict=True)]}
    _, report = write_reports(QADataset("toy", examples, []), results, {"git_commit": name},
                              tmp_path / name)
    return report


def test_compare_finds_a_real_improvement_and_not_a_null_one(tmp_path: Path) -> None:
    before = _qa_run(tmp_path, "before", [True] * 10 + [False] * 30)
    after = _qa_run(tmp_path, "after", [True] * 35 + [False] * 5)
    assert load_run(tmp_path / "after").path == after  # a folder resolves to its one report
    rows = {r["metric"]: r for r in compare_runs(load_run(before), load_run(after))}
    assert rows["accuracy"]["diff"] == pytest.approx(0.625) and rows["accuracy"]["significant"]
    assert rows["accuracy"]["ci95_low"] > 0.4
    same = {r["metric"]: r for r in compare_runs(load_run(before), load_run(before))}
    assert same["accuracy"]["diff"] == 0 and not same["accuracy"]["significant"]


def test_paired_rows_pair_only_common_queries() -> None:
    rows = paired_rows({"m": {"a": 1.0, "b": 1.0, "c": 0.0}}, {"m": {"a": 0.0, "b": 0.0}})
    assert rows[0]["n"] == 2 and rows[0]["mean_diff"] == 1.0
    low, high = mean_ci([0.0, 1.0] * 50)
    assert low < 0.5 < high


def test_load_run_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no such report"):
        load_run(tmp_path / "missing")
    (tmp_path / "retrieval.json").write_text("{}")
    (tmp_path / "qa-x.json").write_text("{}")
    with pytest.raises(RunError, match="several reports"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="not a retrieval or QA report"):
        load_run(tmp_path / "retrieval.json")


def test_gates_parse_check_and_explain() -> None:
    summary = {"rag": {"accuracy": 0.5, "f1": 0.7}, "crag": {"accuracy": 0.8, "f1": 0.9}}
    assert check_gates([Gate.parse("accuracy < 0.6")], summary) == [
        "accuracy < 0.6: rag: accuracy = 0.5000 < 0.6"]
    assert check_gates([Gate.parse("crag:accuracy < 0.6"), Gate.parse("f1 >= 1")], summary) == []
    gate = Gate.parse(" crag : NDCG@10<=.7 ")
    assert (gate.config, gate.metric, gate.op, gate.threshold) == ("crag", "ndcg@10", "<=", 0.7)
    for bad in ("accuracy", "accuracy < high", "accuracy =< 0.5", "< 0.5"):
        with pytest.raises(GateError, match="cannot parse"):
            Gate.parse(bad)
    with pytest.raises(GateError, match="no metric 'ndcg@10'.*known: accuracy, f1"):
        check_gates([Gate.parse("ndcg@10 < 0.7")], summary)
    with pytest.raises(GateError, match="no configuration 'hyde'"):
        check_gates([Gate.parse("hyde:accuracy < 0.7")], summary)
    with pytest.raises(GateError, match="needs a comparison"):
        check_gates([Gate.parse("delta(accuracy) < 0")], summary)
    rows = [{"config": "rag", "metric": "accuracy", "diff": -0.1, "ci95_low": -0.2,
             "ci95_high": -0.01}]
    assert len(check_gates([Gate.parse("delta_high(accuracy) < 0")], summary, rows)) == 1
    assert check_gates([Gate.parse("delta(accuracy) < -0.2")], summary, rows) == []


def test_compare_command_prints_intervals_and_gates_set_the_exit_code(tmp_path: Path) -> None:
    before = _qa_run(tmp_path, "before", [True] * 30 + [False] * 10)
    after = _qa_run(tmp_path, "after", [True] * 10 + [False] * 30)
    runner = CliRunner()
    ok = runner.invoke(app, ["eval", "compare", str(before), str(after), "--out",
                             str(tmp_path / "c.md")])
    assert ok.exit_code == 0, ok.output
    assert "| rag | accuracy | 40 | 0.7500 | 0.2500 | -0.5000 |" in ok.output
    assert (tmp_path / "c.md").read_text() == ok.output
    page = runner.invoke(app, ["eval", "compare", str(before), str(after), "--out",
                               str(tmp_path / "c.html")])
    html = (tmp_path / "c.html").read_text()
    assert page.exit_code == 0 and html.startswith("<!DOCTYPE html>")
    assert html.index("Differences (B − A)") < html.index('class="provenance"')
    failed = runner.invoke(app, ["eval", "compare", str(before), str(after),
                                 "--fail-if", "delta_high(accuracy) < 0"])
    assert failed.exit_code == 1 and "gate failed: delta_high(accuracy) < 0: rag" in failed.output
    passed = runner.invoke(app, ["eval", "compare", str(before), str(after),
                                 "--fail-if", "accuracy < 0.2"])
    assert passed.exit_code == 0 and "gates passed: 1" in passed.output
    bad = runner.invoke(app, ["eval", "compare", str(before), str(after), "--fail-if", "accuracy"])
    assert bad.exit_code == 2 and "cannot parse gate" in bad.output
    unknown = runner.invoke(app, ["eval", "compare", str(before), str(after),
                                  "--fail-if", "ndcg@10 < 0.7"])
    assert unknown.exit_code == 2 and "no metric 'ndcg@10'" in unknown.output


def test_outcomes_round_trip_through_the_report(tmp_path: Path) -> None:
    report = _qa_run(tmp_path, "r", [True, False])
    data = json.loads(report.read_text())
    restored = Outcome(**{**data["outcomes"]["rag"][0],
                          **{k: tuple(data["outcomes"]["rag"][0][k])
                             for k in ("cited", "gold", "sources", "context_relevant", "supported")}})
    assert restored.contains == 1.0 and restored.sources[0]["document"] == "paris.txt"
    assert data["kind"] == "qa" and data["ci95"]["rag"]["accuracy"][0] <= 0.5
    assert data["summary"]["rag"]["abstain_precision"] is None  # no abstention: null, not NaN
    assert "NaN" not in report.read_text()
    assert report.with_suffix(".html").is_file()


@pytest.mark.parametrize(("args", "needle"), [
    (["retrieval", "--url", "http://127.0.0.1:9", "--modes", "dense-float32"],
     "with --url, mode must be one of dense, bm25, hybrid"),
    (["retrieval", "--url", "http://127.0.0.1:9", "--depth", "100"], "at most 50 hits"),
    (["retrieval", "--modes", "dense-float32", "--matrix", "MATRIX"], "not both"),
    (["retrieval", "--fail-if", "ndcg@10 <> 1"], "cannot parse gate"),
    (["qa", "--configs", "rag,hyde"], "use --matrix FILE"),
    (["qa", "--judge", "gpt"], "--judge must be local, none or an http(s) URL"),
])
def test_eval_commands_refuse_bad_setups_before_any_work(tmp_path: Path, args: list[str],
                                                         needle: str) -> None:
    (tmp_path / "m.yaml").write_text("configs:\n  - name: a\n    mode: dense-float32\n")
    common = ["--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    if args[0] == "retrieval":
        common += ["--collection", "c"]
    args = [str(tmp_path / "m.yaml") if a == "MATRIX" else a for a in args]
    result = CliRunner().invoke(app, ["eval", *args, *common], env={"VERITY_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (tmp_path / "out").exists()
