"""``verity eval`` against a running ``verity serve`` (API keys on) over HTTP, as CI would run it
against a deployment: the corpus is ingested and the key created with the CLI in the server's
data directory, then the harness talks only to /v1/search and /v1/query."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import write_beir
from tests.integration.test_clients import Server, _cli, _env, serving
from tests.integration.test_eval_retrieval import DOCS, QRELS, QUERIES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VERITY = [sys.executable, "-m", "verity.cli"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """``verity serve`` over collection ``tiny`` (the five-document BEIR set); yields it and the set."""
    root = tmp_path_factory.mktemp("eval-remote")
    dataset = write_beir(root / "tiny-beir", docs=list(DOCS), queries=list(QUERIES), qrels=QRELS)
    env = _env(root / "data")
    _cli(["ingest", "--format", "beir", str(dataset), "--collection", "tiny"], env)
    with serving(root, env) as server:
        yield server, dataset


def _eval(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # A data directory of its own: the harness must not need the server's.
    env = _env(tmp_path / "client-data")
    return subprocess.run(VERITY + ["eval", *args], env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)


def test_retrieval_through_the_service_then_a_comparison_with_intervals(
    served: tuple[Server, Path], tmp_path: Path
) -> None:
    server, dataset = served
    common = ["retrieval", "--dataset", str(dataset), "--collection", "tiny", "--url",
              server.base_url, "--api-key", server.key, "--depth", "10"]
    first = _eval([*common, "--modes", "dense,bm25", "--out", str(tmp_path / "a")], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    report = json.loads((tmp_path / "a" / "retrieval.json").read_text())
    assert [m["mode"] for m in report["modes"]] == ["dense", "bm25"]
    dense = report["modes"][0]
    assert dense["metrics"]["mrr@10"] == 1.0  # each query is its document's title
    assert dense["per_query_search_ms"].keys() == {"q-bees", "q-chess", "q-rust"}
    assert report["provenance"]["models"] == {"target": server.base_url}
    assert report["drilldown"][0]["hits"]["dense"][0] == {"doc": "bees", "grade": 2}

    second = _eval([*common, "--modes", "hybrid,dense", "--out", str(tmp_path / "b"), "--baseline",
                    str(tmp_path / "a"), "--fail-if", "delta(ndcg@10) < 0"], tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "against baseline" in second.stdout
    assert "dense ndcg@10: 1.0000 -> 1.0000, +0.0000 [+0.0000, +0.0000]" in second.stdout
    assert "gates passed: 1" in second.stdout
    recorded = json.loads((tmp_path / "b" / "retrieval.json").read_text())
    assert {r["config"] for r in recorded["baseline_comparison"]["rows"]} == {"dense"}
    assert (tmp_path / "b" / "comparison.md").is_file()

    gated = _eval([*common, "--modes", "dense", "--out", str(tmp_path / "c"),
                   "--fail-if", "dense:ndcg@10 < 1.5"], tmp_path)
    assert gated.returncode == 1
    assert "gate failed: dense:ndcg@10 < 1.5: dense: ndcg@10 = 1.0000 < 1.5" in gated.stderr


def test_a_wrong_key_is_a_clear_error(served: tuple[Server, Path], tmp_path: Path) -> None:
    server, dataset = served
    run = _eval(["retrieval", "--dataset", str(dataset), "--collection", "tiny", "--url",
                 server.base_url, "--api-key", "not-a-key", "--depth", "10", "--out",
                 str(tmp_path / "r")], tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "refused the request (401): pass a valid key with --api-key" in run.stderr


def test_qa_through_the_service(served: tuple[Server, Path], tmp_path: Path) -> None:
    server, _ = served
    questions = tmp_path / "chess.jsonl"
    questions.write_text(json.dumps({"question": "What does the Sicilian Defence answer 1.e4 with?",
                                     "answers": ["c5"]}) + "\n")
    args = ["qa", "--dataset", str(questions), "--collection", "tiny", "--url", server.base_url,
            "--api-key", server.key, "--configs", "rag", "--judge", "none", "--out",
            str(tmp_path / "qa")]
    run = _eval(args, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "qa" / "qa-chess.json").read_text())
    (outcome,) = report["outcomes"]["rag"]
    assert outcome["status"] in ("answered", "abstained")
    assert outcome["sources"] and outcome["sources"][0]["document"] == "chess"
    assert outcome["context_relevant"][0] is True  # the chess passage holds "c5"
    assert report["provenance"]["target"] == f"service at {server.base_url}, collection tiny"
    # The answer is cached: a second run asks the service nothing (the recorded latency
    # would differ) and reports the same.
    httpx.get(f"{server.base_url}/healthz").raise_for_status()
    again = _eval(args, tmp_path)
    assert again.returncode == 0
    assert json.loads((tmp_path / "qa" / "qa-chess.json").read_text())["outcomes"] == report["outcomes"]
