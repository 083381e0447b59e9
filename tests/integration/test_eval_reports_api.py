"""Saved evaluation reports over HTTP: list, page, comparison; admin keys only; no name reaches a
file outside the reports folder. The reports are made by the real harness on tiny datasets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from eval.archive import ReportFolder
from service.app import create_app
from tests.clients import bearer
from tests.helpers import save_eval_reports
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("served") / "reports"
    names = save_eval_reports(root)
    secret = root.parent / "secret.json"  # beside the folder, never inside it
    secret.write_text('{"outcomes": {}, "token": "do-not-serve"}')
    return root, names


@pytest.fixture(scope="module")
def client(retrieval_runtime: Runtime,
           reports: tuple[Path, dict[str, str]]) -> Iterator[TestClient]:
    settings = retrieval_runtime.settings.model_copy(update={
        "server": retrieval_runtime.settings.server.model_copy(update={"auth": True})})
    app = create_app(settings, runtime=replace(retrieval_runtime, settings=settings),
                     reports=ReportFolder(reports[0]))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def admin(retrieval_runtime: Runtime) -> dict[str, str]:
    return bearer(ApiKeys(retrieval_runtime.db).create(tenant="evals", is_admin=True)[0])


def test_an_admin_lists_reports_with_their_headline_numbers(
        client: TestClient, admin: dict[str, str], reports: tuple[Path, dict[str, str]]) -> None:
    names = reports[1]
    r = client.get("/v1/eval/reports", headers=admin)
    assert r.status_code == 200, r.text
    listed = {x["name"]: x for x in r.json()["reports"]}
    assert set(listed) == set(names.values())
    assert listed[names["after"]]["kind"] == "qa" and listed[names["after"]]["dataset"] == "toy"
    assert listed[names["after"]]["metrics"]["crag"]["accuracy"] == pytest.approx(0.875)
    assert listed[names["retrieval"]]["kind"] == "retrieval"
    assert "ndcg@10" in listed[names["retrieval"]]["metrics"]["dense-float32"]


def test_a_report_page_is_sandboxed_and_leads_with_its_summary(
        client: TestClient, admin: dict[str, str], reports: tuple[Path, dict[str, str]]) -> None:
    name = reports[1]["retrieval"]
    r = client.get(f"/v1/eval/reports/{name}", headers=admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert policy.startswith("sandbox;") and "default-src 'none'" in policy
    assert "script-src" not in policy and r.headers["x-content-type-options"] == "nosniff"
    assert r.text.index('id="summary"') < r.text.index('class="provenance"')
    assert r.text == (reports[0] / f"{name}.html").read_text(encoding="utf-8")


def test_two_runs_compare_differences_first(client: TestClient, admin: dict[str, str],
                                            reports: tuple[Path, dict[str, str]]) -> None:
    names = reports[1]
    r = client.get("/v1/eval/compare", params={"a": names["before"], "b": names["after"]},
                   headers=admin)
    assert r.status_code == 200, r.text
    assert r.headers["content-security-policy"].startswith("sandbox;")
    assert r.text.index("Differences (B − A)") < r.text.index('class="provenance"')
    assert "+0.6250" in r.text  # accuracy 0.25 -> 0.875
    mixed = client.get("/v1/eval/compare", params={"a": names["before"], "b": names["retrieval"]},
                       headers=admin)
    assert mixed.status_code == 400 and "cannot compare" in mixed.json()["error"]["message"]
    missing = client.get("/v1/eval/compare", params={"a": names["before"], "b": "gone/qa-x"},
                         headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize("path", [
    "/v1/eval/reports/..%2Fsecret", "/v1/eval/reports/%2E%2E/secret",
    "/v1/eval/reports/..%2F..%2Fetc%2Fpasswd", "/v1/eval/reports/%2Fetc%2Fpasswd",
    "/v1/eval/reports/qa-toy-before/..%2F..%2Fsecret", "/v1/eval/reports/.hidden",
    "/v1/eval/reports/qa-toy-before%5C..%5Csecret", "/v1/eval/reports/nothing/here",
    "/v1/eval/compare?a=qa-toy-before/qa-toy&b=..%2Fsecret",
])
def test_names_cannot_reach_files_outside_the_folder(client: TestClient, admin: dict[str, str],
                                                     path: str) -> None:
    r = client.get(path, headers=admin)
    assert r.status_code in (404, 422), (path, r.status_code, r.text)
    assert "do-not-serve" not in r.text and "root:" not in r.text
    assert r.json()["error"]["type"] in ("not_found", "invalid_request")


def test_only_admin_keys_see_reports(client: TestClient, retrieval_runtime: Runtime,
                                     reports: tuple[Path, dict[str, str]]) -> None:
    name = reports[1]["before"]
    member = bearer(ApiKeys(retrieval_runtime.db).create(tenant="evals")[0])
    for path in ("/v1/eval/reports", f"/v1/eval/reports/{name}",
                 f"/v1/eval/compare?a={name}&b={name}"):
        assert client.get(path, headers=member).status_code == 403, path
        assert client.get(path).status_code == 401, path


def test_an_app_built_without_reports_says_so(retrieval_runtime: Runtime) -> None:
    settings = retrieval_runtime.settings.model_copy(update={
        "server": retrieval_runtime.settings.server.model_copy(update={"auth": False})})
    with TestClient(create_app(settings, runtime=replace(retrieval_runtime, settings=settings))) as c:
        r = c.get("/v1/eval/reports")
    assert r.status_code == 404 and "VERITY_EVAL__SERVE_REPORTS" in r.json()["error"]["message"]
