"""``verity eval qa`` in process: a YAML matrix, the local model as generator and faithfulness
judge, the per-question cache and a second run compared with the first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_clients import _env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTIONS = [
    {"id": "bread", "question": "What leavens sourdough bread?",
     "answers": ["wild yeast"],
     "contexts": ["Sourdough bread is leavened by wild yeast and lactic acid bacteria, which also "
                  "give it a sour taste."]},
    {"id": "moon", "question": "What colour is the lighthouse keeper's cat?", "unanswerable": True,
     "contexts": ["The lighthouse keeper lights the lamp at dusk and writes the weather into the "
                  "log every hour."]},
]
MATRIX = """configs:
  - name: rag-dense-k2
    mode: dense
    top_k: 2
    chunk_tokens: 64
  - name: crag
    crag: true
"""


@pytest.mark.timeout(2400)  # four answers, judgments and CRAG's rewrite on the local model
def test_matrix_run_with_judge_resumes_and_compares(tmp_path: Path) -> None:
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX)
    env = _env(tmp_path / "data")
    # Patient with a loaded machine (an answer that times out is not cached and the cache check
    # below would fail), and short answers to keep the run short.
    env.update(VERITY_LLM__TIMEOUT_S="900", VERITY_LLM__MAX_TOKENS="64")
    args = [sys.executable, "-m", "verity.cli", "eval", "qa", "--dataset", str(dataset), "--matrix",
            str(matrix), "--limit", "1", "--out", str(tmp_path / "run1"),
            "--fail-if", "citation_validity < 0"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1500,
                           stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stdout + first.stderr
    # Only the first question is asked, but the corpus of every question is ingested (the generic
    # JSONL adapter pools contexts), once per chunk size.
    assert "corpus (qa-tiny-c64)" in first.stderr and "corpus (qa-tiny)" in first.stderr
    report = json.loads((tmp_path / "run1" / "qa-tiny.json").read_text())
    assert list(report["summary"]) == ["rag-dense-k2", "crag"]
    assert report["configs"]["rag-dense-k2"] == {"mode": "dense", "top_k": 2, "chunk_tokens": 64}
    assert report["judge"].endswith("(local llama.cpp)")
    assert set(report["provenance"]["prompt_hashes"]) >= {"answer_user", "faithfulness_judge"}
    assert report["provenance"]["git_commit"] and report["provenance"]["dataset_sha256"]
    assert report["provenance"]["questions"] == 1
    rag = {o["id"]: o for o in report["outcomes"]["rag-dense-k2"]}
    assert len(rag["bread"]["sources"]) <= 2
    if rag["bread"]["status"] == "answered":
        assert rag["bread"]["faithfulness"] is not None and rag["bread"]["judge"] == report["judge"]
    assert all(o["action"] for o in report["outcomes"]["crag"])  # CRAG records its action
    for key in ("context_precision", "abstain_precision", "abstain_recall", "faithfulness",
                "generate_p50_ms", "embed_p95_ms"):
        assert key in report["summary"]["crag"]
    html = (tmp_path / "run1" / "qa-tiny.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "What leavens sourdough bread?" in html

    # Same settings, new folder, same cache: nothing is asked again, the comparison is printed.
    (tmp_path / "run2").mkdir()
    (tmp_path / "run1" / "cache").rename(tmp_path / "run2" / "cache")
    second = subprocess.run(
        [*args[:-4], "--out", str(tmp_path / "run2"), "--baseline", str(tmp_path / "run1")],
        env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "against baseline" in second.stdout and "crag accuracy: " in second.stdout
    again = json.loads((tmp_path / "run2" / "qa-tiny.json").read_text())
    assert again["outcomes"] == report["outcomes"]


def test_answers_are_cached_under_the_settings_that_produced_them(tmp_path: Path) -> None:
    """A rerun into the same folder reuses an answer only if nothing that decides it changed:
    new CRAG thresholds ask CRAG again but not plain RAG, a new thread count asks nobody."""
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    env = _env(tmp_path / "data")
    args = [sys.executable, "-m", "verity.cli", "eval", "qa", "--dataset", str(dataset), "--configs",
            "rag,crag", "--no-generate", "--judge", "none", "--out", str(tmp_path / "run")]
    cache = tmp_path / "run" / "cache-decisions"

    def run(**changes: str) -> dict[str, int]:
        done = subprocess.run(args, env={**env, **changes}, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        return {p.name: len(p.read_text().splitlines()) for p in cache.iterdir()}

    first = run()
    assert sorted(first.values()) == [2, 2], first  # one file per configuration, both questions
    assert run(VERITY_LLM__THREADS="1") == first
    moved = run(VERITY_CRAG__UPPER="0.99", VERITY_CRAG__LOWER="0.98")
    new = set(moved) - set(first)
    assert len(new) == 1 and next(iter(new)).startswith("tiny.crag."), moved
    assert {name: moved[name] for name in first} == first
