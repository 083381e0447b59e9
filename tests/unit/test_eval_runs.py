"""The orchestration of evaluation runs, called as functions (no command line spawned)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from pydantic import ValidationError

from eval.calibrate import AbstentionThreshold, Thresholds
from eval.calibration_runs import abstention_lines, thresholds_lines
from eval.matrix import EvalConfig, MatrixError
from eval.qa_datasets import QADataset, QAExample
from eval.qa_runs import (
    QaTarget,
    answer_all,
    build_judge,
    cache_key,
    check_judge,
    qa_collection,
    qa_configs,
    service_target,
    summary_line,
    write_qa_reports,
)
from eval.retrieval_runs import retrieval_configs, retrieval_metrics, run_setup, with_rerank
from eval.runs import chunk_collection, chunking_for, command_line
from verity.core.errors import ConfigError
from verity.core.settings import ChunkingSettings, Settings
from verity.core.types import Answer, Citation

pytestmark = pytest.mark.unit

SOURCES = (Citation(1, "paris.txt", "c1", "Paris is the capital of France."),)


# --- shared ---------------------------------------------------------------------------------


def test_command_line_quotes_what_a_shell_would_split() -> None:
    assert command_line(["eval", "qa", "--fail-if", "accuracy < 0.5"]) == (
        "verity eval qa --fail-if 'accuracy < 0.5'")


def test_a_configuration_that_rechunks_gets_its_own_collection() -> None:
    chunking = ChunkingSettings()
    assert chunk_collection("scifact", None) == "scifact"
    assert chunk_collection("scifact", 64) == "scifact-c64"
    assert chunking_for(chunking, None) is chunking
    assert chunking_for(chunking, 64).chunk_tokens == 64
    assert chunking_for(chunking, 64).overlap_tokens == chunking.overlap_tokens


# --- retrieval ------------------------------------------------------------------------------


def test_retrieval_configs_default_to_float_and_rescored_binary_in_process() -> None:
    configs = retrieval_configs(None, None, remote=False, depth=100, oversample=4)
    assert [(c.name, c.mode) for c in configs] == [
        ("dense-float32", "dense-float32"), ("dense-binary-rescore", "dense-binary-rescore")]


def test_retrieval_configs_against_a_service_default_to_its_modes_once_each() -> None:
    assert [c.mode for c in retrieval_configs(None, None, remote=True, depth=10, oversample=4)] == [
        "dense", "bm25", "hybrid"]
    assert [c.mode for c in retrieval_configs("bm25, bm25,dense", None, remote=True, depth=10,
                                              oversample=4)] == ["bm25", "dense"]


@pytest.mark.parametrize(("modes", "remote", "depth", "needle"), [
    ("dense-float32", True, 10, "with --url, mode must be one of dense, bm25, hybrid"),
    ("dense", True, 51, "/v1/search returns at most 50 hits; pass --depth 50 or less"),
    ("nonsense", False, 10, "nonsense"),
])
def test_retrieval_configs_refuse_what_cannot_run(modes: str, remote: bool, depth: int,
                                                  needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        retrieval_configs(modes, None, remote=remote, depth=depth, oversample=4)


def test_retrieval_matrix_entries_are_checked(tmp_path: Path) -> None:
    matrix = tmp_path / "m.yaml"
    matrix.write_text("configs:\n  - name: small\n    chunk_tokens: 64\n")
    with pytest.raises(ValueError, match="use --modes or --matrix, not both"):
        retrieval_configs("bm25", matrix, remote=False, depth=10, oversample=4)
    with pytest.raises(ValueError, match="small: a retrieval configuration needs a mode"):
        retrieval_configs(None, matrix, remote=False, depth=10, oversample=4)
    matrix.write_text("configs:\n  - name: small\n    mode: dense\n    chunk_tokens: 64\n")
    with pytest.raises(ValueError, match="small: with --url only mode and top_k/depth can vary"):
        retrieval_configs(None, matrix, remote=True, depth=10, oversample=4)


def test_rerank_options_override_the_settings_and_are_validated() -> None:
    settings = Settings(_env_file=None)
    changed = with_rerank(settings, top_n=7, fusion=None, weight=0.25)
    assert (changed.rerank.top_n, changed.rerank.weight) == (7, 0.25)
    assert changed.rerank.fusion == settings.rerank.fusion
    with pytest.raises(ValidationError):
        with_rerank(settings, top_n=None, fusion=None, weight=2.0)


def test_run_setup_and_metrics() -> None:
    configs = [EvalConfig(name="small", mode="bm25", chunk_tokens=64)]
    setup = run_setup(configs, depth=100, oversample=4, chunking=ChunkingSettings())
    assert setup["configs"] == {"small": {"mode": "bm25", "chunk_tokens": 64}}
    assert (setup["depth"], setup["oversample"]) == (100, 4)
    assert "map" in retrieval_metrics() and "ndcg@10" in retrieval_metrics()


# --- QA -------------------------------------------------------------------------------------


def test_qa_configs_default_to_rag_and_crag_and_name_presets() -> None:
    assert [c.name for c in qa_configs(None, None, remote=False)] == ["rag", "crag"]
    assert [c.name for c in qa_configs("crag", None, remote=True)] == ["crag"]
    with pytest.raises(MatrixError):
        qa_configs("nope", None, remote=False)
    with pytest.raises(ValueError, match="crag\\+replay: with --url only crag, mode and top_k"):
        qa_configs("crag+replay", None, remote=True)


def test_qa_matrix_checks_replay_and_modes(tmp_path: Path) -> None:
    matrix = tmp_path / "m.yaml"
    matrix.write_text("configs:\n  - name: r\n    replay: true\n")
    with pytest.raises(ValueError, match="r: replay needs crag: true"):
        qa_configs(None, matrix, remote=False)
    matrix.write_text("configs:\n  - name: r\n    mode: dense-int8\n")
    with pytest.raises(ValueError, match="r: mode must be one of dense, bm25, hybrid"):
        qa_configs(None, matrix, remote=False)


def test_judges_are_local_none_or_a_url() -> None:
    for kind in ("local", "none", "http://judge:8000/v1"):
        check_judge(kind)
    with pytest.raises(ValueError, match="--judge must be local, none or an http"):
        check_judge("gpt")
    with ExitStack() as stack:
        settings = Settings(_env_file=None)
        assert build_judge(stack, settings, "none", None, model=None, key=None) is None
        remote = build_judge(stack, settings, "http://judge:8000/v1", None, model="m", key=None)
        assert remote is not None and remote.name == "m at http://judge:8000/v1"


def test_qa_collection_defaults_to_the_dataset_name() -> None:
    data = QADataset("popqa_crag", [], [])
    assert qa_collection(None, data) == "qa-popqa-crag"
    assert qa_collection("mine", data) == "mine"
    with pytest.raises(ConfigError):
        qa_collection("no spaces", data)


def test_cache_keys_change_with_what_decides_an_answer() -> None:
    rag, crag = EvalConfig(name="rag"), EvalConfig(name="crag", crag=True)
    base = cache_key(rag, None, {"crag": {"upper": 0.5}})
    assert base == cache_key(EvalConfig(name="renamed"), None, {"crag": {"upper": 0.5}})
    assert base != cache_key(rag, None, {"crag": {"upper": 0.6}})
    assert base != cache_key(crag, None, {"crag": {"upper": 0.5}})
    assert cache_key(rag, "http://a", None) != cache_key(rag, "http://b", None)


def test_a_service_target_asks_the_url_and_keys_its_cache_by_it() -> None:
    data = QADataset("toy", [QAExample("0", "q?", ("a",))], [])
    with ExitStack() as stack:
        target = service_target(stack, "http://127.0.0.1:9", None, data, "qa-toy",
                                [EvalConfig(name="rag")], command="verity eval qa")
    assert list(target.answerers) == ["rag"] and target.generator is None
    assert target.info["target"] == "service at http://127.0.0.1:9, collection qa-toy"
    assert target.info["command"] == "verity eval qa"
    assert target.cache_keys == {"rag": cache_key(EvalConfig(name="rag"), "http://127.0.0.1:9",
                                                  None)}


def test_answer_all_reports_progress_caches_and_times_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = QADataset("toy", [QAExample(str(i), f"q{i}", ("Paris",)) for i in range(2)], [])
    asked: list[str] = []

    def answer(question: str) -> Answer:
        asked.append(question)
        return Answer("Paris [1].", "answered", SOURCES, SOURCES)

    target = QaTarget({"rag": answer}, {"dataset": "toy"}, {"rag": "k1"})
    results = answer_all(data, target, judge=None, out=tmp_path, generate=False)
    assert [o.contains for o in results["rag"]] == [1.0, 1.0]
    assert (tmp_path / "cache-decisions" / "toy.rag.k1.jsonl").is_file()
    assert isinstance(target.info["seconds"], float)
    assert "rag: 2/2" in capsys.readouterr().err
    answer_all(data, target, judge=None, out=tmp_path, generate=False)
    assert asked == ["q0", "q1"]
    markdown, report = write_qa_reports(data, results, target.info, tmp_path, judge=None,
                                        configs=[EvalConfig(name="rag")])
    assert markdown.is_file() and report.is_file()
    assert target.info["models"] == {"judge": "none"}
    assert summary_line("rag", results["rag"]).startswith("rag: accuracy 1.000, false abstain 0.000")


# --- calibration ----------------------------------------------------------------------------


def test_calibration_lines_end_with_the_settings_to_use() -> None:
    t = Thresholds(upper=0.6, lower=0.2, precision_correct=0.9, precision_incorrect=0.85,
                   share_correct=0.4, share_incorrect=0.3, n=10)
    lines = thresholds_lines(t, 6)
    assert lines[0] == "10 questions, 6 with the answer in the retrieved chunks"
    assert lines[-1] == "VERITY_CRAG__UPPER=0.6\nVERITY_CRAG__LOWER=0.2"
    a = AbstentionThreshold(threshold=0.3, false_abstain=0.05, abstain_unanswerable=0.4,
                            n_answerable=20, n_unanswerable=5)
    assert abstention_lines(a) == [
        "20 answerable and 5 unanswerable questions",
        "abstain when the best strip < 0.3: 5.0% of answerable, 40.0% of unanswerable questions",
        "VERITY_CRAG__ANSWERABLE_MIN=0.3"]

