"""Feedback on answers: stored through the API, read back by admins, exported as a
``verity eval qa`` dataset by the API and by ``verity feedback export``."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from eval.qa_datasets import load_qa
from tests.clients import bearer, keyed_client
from verity.answering.runtime import Runtime
from verity.backends.stores.api_keys import ApiKeys
from verity.cli.main import app as cli

pytestmark = pytest.mark.integration

WRONG = {"rating": "down", "reason": "wrong", "question": "Who waters the plants?",
         "answer": "Alex waters them [1].", "correct_answer": "Sam", "comment": "It is Sam.",
         "citations": [{"n": 1, "document": "plants.md", "chunk_id": "c-1", "text": "Sam ..."}],
         "trace": {"action": "correct"}}
ABSTAIN = {"rating": "down", "reason": "should_abstain", "question": "Who won the 1966 cup?",
           "answer": "England [1]."}
GOOD = {"rating": "up", "question": "Where do visitors park?", "answer": "In bay C [1]."}


@pytest.fixture(scope="module")
def tenant(retrieval_runtime: Runtime) -> tuple[str, str, str, str]:
    name = f"fb-{uuid.uuid4().hex[:8]}"
    keys = ApiKeys(retrieval_runtime.db)
    return (name, keys.create(tenant=name, is_admin=True)[0], keys.create(tenant=name)[0],
            keys.create(tenant=f"other-{name}", is_admin=True)[0])


@pytest.fixture(scope="module")
def client(retrieval_runtime: Runtime) -> Iterator[TestClient]:
    with keyed_client(retrieval_runtime) as c:
        yield c


def _post(client: TestClient, key: str, body: dict[str, Any], collection: str) -> dict[str, Any]:
    r = client.post("/v1/feedback", headers=bearer(key), json={**body, "collection": collection})
    assert r.status_code == 201, r.text
    saved: dict[str, Any] = r.json()
    return saved


def test_feedback_is_stored_listed_by_admins_of_its_tenant_and_exported_as_a_dataset(
    client: TestClient, tenant: tuple[str, str, str, str], collection: str, tmp_path: Path
) -> None:
    _, admin, user, outsider = tenant
    wrong = _post(client, user, WRONG, collection)
    assert wrong["id"] and wrong["created_at"] and wrong["citations"][0]["document"] == "plants.md"
    _post(client, user, ABSTAIN, collection)
    _post(client, user, GOOD, collection)

    bad = client.post("/v1/feedback", headers=bearer(user),
                      json={**GOOD, "collection": collection, "rating": "meh"})
    assert bad.status_code == 422
    unknown = client.post("/v1/feedback", headers=bearer(user),
                          json={**GOOD, "collection": collection, "stars": 5})
    assert unknown.status_code == 422
    # PostgreSQL's jsonb holds neither NUL nor NaN: they are dropped, not a 500, not a refusal.
    body = json.dumps({**GOOD, "collection": "other"}).encode()[:-1]
    r = client.post("/v1/feedback", headers={**bearer(user), "content-type": "application/json"},
                    content=body + b', "trace": {"a\\u0000": "b\\u0000c"}, "citations": [{"s": NaN}]}')
    assert r.status_code == 201, r.text
    assert r.json()["trace"] == {"a": "bc"} and r.json()["citations"] == [{"s": None}]
    assert client.get("/v1/feedback", headers=bearer(user)).status_code == 403

    listed = client.get("/v1/feedback", headers=bearer(admin),
                        params={"collection": collection}).json()
    assert listed["total"] == 3
    assert [f["question"] for f in listed["feedback"]] == [GOOD["question"], ABSTAIN["question"],
                                                           WRONG["question"]]
    down = client.get("/v1/feedback", headers=bearer(admin),
                      params={"rating": "down", "collection": collection}).json()
    assert down["total"] == 2 and {f["reason"] for f in down["feedback"]} == {"wrong",
                                                                              "should_abstain"}
    assert client.get("/v1/feedback", headers=bearer(outsider)).json()["total"] == 0

    r = client.get("/v1/feedback", headers=bearer(admin),
                   params={"format": "qa", "collection": collection})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    dataset = tmp_path / "regressions.jsonl"
    dataset.write_text(r.text)
    examples = load_qa(dataset).examples
    # The thumbs-up grades nothing; the correction and the abstention become test questions.
    assert [(e.question, e.answers, e.unanswerable) for e in examples] == [
        (WRONG["question"], ("Sam",), False), (ABSTAIN["question"], (), True)]


def test_verity_feedback_export_writes_the_dataset_jsonl_and_csv(
    client: TestClient, tenant: tuple[str, str, str, str], collection: str, tmp_path: Path,
    data_dir: Path
) -> None:
    name, _, user, _ = tenant
    _post(client, user, {**WRONG, "question": "Which bay do visitors use?",
                         "correct_answer": "bay C"}, collection)
    runner = CliRunner()
    env = {"VERITY_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "feedback.jsonl"
    result = runner.invoke(cli, ["feedback", "export", "--tenant", name, "--collection", collection,
                                 "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    examples = load_qa(out).examples
    assert [(e.question, e.answers) for e in examples] == [("Which bay do visitors use?", ("bay C",))]

    result = runner.invoke(cli, ["feedback", "export", "--tenant", name, "--format", "csv",
                                 "--rating", "down"], env=env)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["question"] for r in rows} >= {"Which bay do visitors use?", ABSTAIN["question"]}
    assert all(r["rating"] == "down" for r in rows)
    assert any(r["cited_documents"] == "plants.md" for r in rows)

    result = runner.invoke(cli, ["feedback", "export", "--tenant", name, "--format", "jsonl"],
                           env=env)
    full = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(full) == 5 and full[0]["trace"] == {"action": "correct"}
