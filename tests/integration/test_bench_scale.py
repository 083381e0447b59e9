"""bench/scale.py --smoke, so the scale benchmark keeps working."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_beir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORDS = ["cell", "protein", "gene", "expression", "tumour", "immune", "response", "mouse",
         "patients", "therapy", "risk"]


def test_scale_smoke_measures_every_engine_under_every_filter(tmp_path: Path) -> None:
    docs = [{"_id": str(i), "title": f"study {i}",
             "text": " ".join(WORDS[(i * j) % len(WORDS)] for j in range(1, 30))}
            for i in range(300)]
    queries = [{"_id": f"q{i}", "text": f"{WORDS[i]} {WORDS[(i + 3) % len(WORDS)]}"}
               for i in range(10)]
    write_beir(tmp_path / "scifact", docs=docs, queries=queries)
    out = tmp_path / "scale.json"
    env = {**os.environ, "DATA": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "bench/scale.py", "--smoke", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    [result] = json.loads(out.read_text())
    assert result["size"] == 2000 and result["build"]["chunks_per_s"] > 0
    assert result["build"]["one_by_one_chunks_per_s"] > 0
    assert result["sizes"]["bit HNSW index"]["bytes"] > 0
    assert result["sizes"]["peer FTS GIN index"]["bytes"] > 0
    assert result["sizes"]["tantivy index (lexical/)"]["bytes"] > 0
    assert result["build"]["tantivy_s"] > 0
    rows = {(r["engine"], r["filter"]): r for r in result["rows"]}
    for where in ["none", "acl 50%", "acl 1%"]:
        for engine in ["bm25 tantivy", "bm25 postgres", "dense binary-rescore x10",
                       "hybrid binary-rescore + bm25 tantivy", "hybrid float + bm25 tantivy",
                       "hybrid binary-rescore + bm25 postgres", "peer: postgres FTS ts_rank_cd",
                       "peer: bm25s", "peer: bm25s + FAISS flat hybrid"]:
            assert rows[engine, where]["p50_1"] > 0
        assert rows["peer: FAISS flat (exact)", where]["recall"] == 1.0
        assert rows["dense binary-rescore x10", where]["recall"] >= 0.8
    assert rows["dense FAISS binary+int8 x10", "none"]["recall"] >= 0.8
    for where in ["none", "acl 50%", "acl 1%"]:  # 2,000 chunks: every visible one rescored
        assert rows["dense memory index", where]["recall"] == 1.0
        for engine in ["hybrid memory index + bm25 tantivy",
                       "hybrid memory index + bm25 tantivy, halves in parallel"]:
            assert rows[engine, where]["p50_1"] > 0
    assert result["sizes"]["dense memory index (bits + float16)"]["bytes"] > 0
    assert "| dense float (exact) | acl 1% |" in done.stdout
