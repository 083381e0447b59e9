"""CRAG's answerability check with the real embedder and store (no model server needed)."""

from pathlib import Path

import pytest

from tests.helpers import ingest_texts, replay_connector
from verity.answering.crag import CorrectiveRag
from verity.answering.runtime import Runtime
from verity.core.settings import CragSettings

pytestmark = pytest.mark.integration

FACTS = {
    "falcons.md": "Zorbanian falcons nest on the basalt cliffs of Mount Keral. "
                  "They lay two eggs each spring. Their chicks fledge after forty days.",
    "harbour.md": "The harbour of Port Velm was dredged in 1887. "
                  "Fishing boats moor on its eastern quay.",
}


@pytest.fixture(scope="module")
def facts(retrieval_runtime: Runtime) -> str:
    return ingest_texts(retrieval_runtime, "answerability-facts", FACTS, hash_prefix="a-")


def _crag(runtime: Runtime, answerable_min: float | None) -> CorrectiveRag:
    # Every retrieval graded correct and every strip kept: only the check can abstain.
    return CorrectiveRag(runtime.rag(), CragSettings(enabled=True, upper=-1.0, lower=-1.0,
                                                     strip_min=-1.0, answerable_min=answerable_min))


def test_a_supported_question_passes_and_an_unsupported_one_abstains(
        retrieval_runtime: Runtime, facts: str) -> None:
    crag = _crag(retrieval_runtime, answerable_min=0.45)
    supported = crag.prepare("How many eggs do Zorbanian falcons lay?", collection=facts)
    assert not supported.abstain and supported.trace["best_strip"] >= 0.45
    assert "two eggs" in supported.sources[0].text
    unsupported = crag.prepare("Who painted the ceiling of the Sistine Chapel?", collection=facts)
    assert unsupported.abstain and unsupported.trace["best_strip"] < 0.45
    assert unsupported.trace["abstained"].startswith("no retrieved sentence supports")
    assert unsupported.sources  # the closest sources are still listed


def test_the_check_is_off_by_default(retrieval_runtime: Runtime, facts: str) -> None:
    prepared = _crag(retrieval_runtime, answerable_min=None).prepare(
        "Who painted the ceiling of the Sistine Chapel?", collection=facts)
    assert not prepared.abstain and "best_strip" in prepared.trace


def test_ambiguous_puts_corrective_results_after_the_internal_knowledge(
        retrieval_runtime: Runtime, facts: str, tmp_path: Path) -> None:
    question = "How many eggs do Zorbanian falcons lay?"
    # Web snippets that name the falcons as exactly as the question does.
    replay = replay_connector(
        tmp_path, question,
        "#Zorbanian falcons: Zorbanian falcons lay eggs. ; "
        "#Zorbanian falcon eggs: How many eggs Zorbanian falcons lay is unknown.")
    crag = CorrectiveRag(retrieval_runtime.rag(), CragSettings(
        enabled=True, upper=0.99, lower=-1.0, strip_min=-1.0), [replay])
    prepared = crag.prepare(question, collection=facts)
    assert prepared.trace["action"] == "ambiguous" and not prepared.abstain
    kinds = ["replay" if s.document.startswith("replay:") else "internal" for s in prepared.sources]
    assert kinds[0] == "internal" and "replay" in kinds
    assert kinds == sorted(kinds)  # every internal source before every replayed one
    assert "two eggs" in prepared.sources[0].text
