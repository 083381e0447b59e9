"""The reports folder the service browses, the report pages' order, and the comparison page."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eval.archive import ReportFolder
from tests.helpers import save_eval_reports
from verity.core.errors import ConfigError, NotFoundError
from verity.core.reports import validate_report_name
from verity.core.settings import EvalSettings, Settings

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportFolder, dict[str, str]]:
    root = tmp_path_factory.mktemp("archive") / "reports"
    names = save_eval_reports(root)
    return ReportFolder(root), names


def test_reports_are_listed_with_kind_dataset_and_headline_numbers(
        saved: tuple[ReportFolder, dict[str, str]]) -> None:
    folder, names = saved
    (folder.root / "half-written").mkdir()
    (folder.root / "half-written" / "retrieval.json").write_text("{\"modes\": [")
    (folder.root / "notes.json").write_text("{}")  # not a report's file name
    listed = {r.name: r for r in folder.list_reports()}
    assert set(listed) == set(names.values())
    before, retrieval = listed[names["before"]], listed[names["retrieval"]]
    assert before.kind == "qa" and before.dataset == "toy" and before.git_commit == "before-commit"
    assert before.metrics["rag"]["accuracy"] == pytest.approx(0.25)
    assert retrieval.kind == "retrieval" and retrieval.dataset == "scifact"
    assert set(retrieval.metrics["dense-float32"]) == {"ndcg@10", "recall@100", "map", "mrr@10"}
    assert retrieval.created_utc and before.created_utc


def test_a_report_page_leads_with_its_summary_and_ends_with_provenance_and_drilldown(
        saved: tuple[ReportFolder, dict[str, str]]) -> None:
    folder, names = saved
    for name in (names["before"], names["retrieval"]):
        page = folder.report_html(name)
        summary, provenance = page.index('id="summary"'), page.index('class="provenance"')
        assert summary < page.index("<h2>Plots</h2>") < provenance < page.index("drill-down")
        assert '<div class="scroll" tabindex="0"><table class="summary">' in page
    qa = folder.report_html(names["after"])
    assert qa.index("Differences between configurations") < qa.index('class="provenance"')


def test_a_missing_page_is_rendered_from_the_json(saved: tuple[ReportFolder, dict[str, str]],
                                                  tmp_path: Path) -> None:
    folder, names = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "retrieval.json").write_bytes((folder.root / f"{names['retrieval']}.json").read_bytes())
    assert "Retrieval evaluation: scifact" in ReportFolder(tmp_path).report_html("copy/retrieval")


def test_the_comparison_page_leads_with_the_differences(
        saved: tuple[ReportFolder, dict[str, str]]) -> None:
    folder, names = saved
    page = folder.compare_html(names["before"], names["after"])
    assert page.index("Differences (B − A)") < page.index("Summary side by side") \
        < page.index('class="provenance"')
    assert f"Comparison: {names['before']} → {names['after']}" in page
    assert str(folder.root) not in page  # named as the API names them, not by their paths
    assert '<tr class="significant"><td>rag</td><td>accuracy</td>' in page
    with pytest.raises(ConfigError, match="cannot compare a retrieval run with a qa run"):
        folder.compare_html(names["retrieval"], names["before"])


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a/../../b", ".hidden/qa-x",
                                  "a//b", "a\\b", "a/b/c/d/e", "", "x" * 200, "qa-x\x00"])
def test_names_that_could_leave_the_folder_are_refused(saved: tuple[ReportFolder, dict[str, str]],
                                                       name: str) -> None:
    folder, names = saved
    with pytest.raises(ConfigError, match="invalid report name"):
        validate_report_name(name)
    with pytest.raises(ConfigError):
        folder.report_html(name)
    with pytest.raises(ConfigError):
        folder.compare_html(names["before"], name)


def test_unknown_reports_and_links_out_of_the_folder_are_not_found(
        saved: tuple[ReportFolder, dict[str, str]], tmp_path: Path) -> None:
    folder, names = saved
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "qa-secret.json").write_bytes((folder.root / f"{names['before']}.json").read_bytes())
    (outside / "qa-secret.html").write_text("secret page")
    os.symlink(outside, folder.root / "linked")
    for name in ("nothing/here", "linked/qa-secret", "qa-toy-before/qa-toy.html",
                 "qa-toy-before/qa-toy.md", "qa-toy-before"):
        with pytest.raises(NotFoundError):
            folder.report_html(name)
    assert "linked/qa-secret" not in {r.name for r in folder.list_reports()}


def test_the_reports_folder_defaults_under_the_data_dir(tmp_path: Path) -> None:
    assert Settings(_env_file=None, data_dir=tmp_path).reports_dir == tmp_path / "reports"
    settings = Settings(_env_file=None, data_dir=tmp_path,
                        eval=EvalSettings(reports_dir=tmp_path / "r"))
    assert settings.reports_dir == tmp_path / "r"


def test_runs_without_out_get_a_new_folder_the_archive_can_name(tmp_path: Path) -> None:
    from verity.cli.eval import default_out

    settings = Settings(_env_file=None, data_dir=tmp_path)
    out = default_out(settings, "qa", "../pop qa/../x")
    assert out.parent == tmp_path / "reports"
    validate_report_name(f"{out.name}/qa-x")  # a name the API can serve
    assert out.name.startswith("qa-pop-qa-x-")
