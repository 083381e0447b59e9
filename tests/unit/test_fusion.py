import pytest

from verity.answering.fusion import fuse, reciprocal_rank_fusion, weighted_fusion
from verity.core.lexical import analyze
from verity.core.types import Chunk, ScoredChunk

pytestmark = pytest.mark.unit


def _hits(stage: str, *pairs: tuple[str, float]) -> list[ScoredChunk]:
    return [ScoredChunk(chunk=Chunk(id=cid, document_id="d", ordinal=0, text=cid), score=s,
                        source="d", scores={stage: s}) for cid, s in pairs]


def test_rrf_rewards_agreement_and_keeps_stage_scores() -> None:
    dense = _hits("dense", ("a", 0.9), ("b", 0.8), ("c", 0.7))
    lexical = _hits("bm25", ("c", 12.0), ("a", 11.0), ("d", 3.0))
    fused = reciprocal_rank_fusion([dense, lexical], k=60)
    assert [h.chunk.id for h in fused] == ["a", "c", "b", "d"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[0].scores["dense"] == 0.9 and fused[0].scores["bm25"] == 11.0
    assert "bm25" not in fused[2].scores


def test_weighted_fusion_normalises_each_list() -> None:
    dense = _hits("dense", ("a", 0.9), ("b", 0.5))
    lexical = _hits("bm25", ("b", 20.0), ("a", 10.0))
    assert [h.chunk.id for h in weighted_fusion([dense, lexical], weights=[0.8, 0.2])] == ["a", "b"]
    assert [h.chunk.id for h in weighted_fusion([dense, lexical], weights=[0.2, 0.8])] == ["b", "a"]


def test_fuse_validates_the_method_and_truncates() -> None:
    dense = _hits("dense", ("a", 0.9), ("b", 0.5), ("c", 0.1))
    assert len(fuse([dense, []], method="rrf", top_k=2)) == 2
    with pytest.raises(ValueError, match="rrf"):
        fuse([dense], method="max")  # type: ignore[arg-type]  # an unknown method on purpose


def test_analysis_stems_and_drops_stopwords() -> None:
    assert analyze("The cells were Running into the walls") == ["cell", "were", "run", "wall"]
