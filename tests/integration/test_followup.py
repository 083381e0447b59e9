"""Follow-up questions through POST /v1/query: the conversation so far turns a follow-up into
a standalone question (prompts/condense.j2) before retrieval, with the local llama.cpp model."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import ingest_texts
from verity.answering.followup import clean_question, standalone_question
from verity.answering.runtime import Runtime
from verity.core.prompts import PromptLibrary
from verity.core.types import Turn

pytestmark = pytest.mark.integration

CORPUS = {
    "plants.md": "# Office care\n\n## Plants\n\nThe office plants are watered every Tuesday by "
                 "Sam. Sam also feeds the fish on Fridays.\n",
    "parking.md": "# Parking\n\nVisitors park in bay C. Staff badges open the garage gate "
                  "before 7 am.\n",
    "kitchen.md": "# Kitchen\n\nThe dishwasher is emptied by Priya every morning. The fridge is "
                  "cleared on the last Friday of the month.\n",
}
FIRST = Turn(question="Who waters the office plants?",
             answer="Sam waters the office plants every Tuesday [1].")
FOLLOW_UP = "What else does he do?"


def _query(client: TestClient, collection: str, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/query", json={"collection": collection, "crag": False, **body})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def test_a_follow_up_is_rewritten_with_the_conversation_before_retrieval(
    runtime: Runtime, collection: str
) -> None:
    ingest_texts(runtime, collection, CORPUS)
    with TestClient(create_app(runtime.settings, runtime=runtime)) as client:
        alone = _query(client, collection, question=FOLLOW_UP)
        assert "conversation" not in alone["trace"] and "condense_ms" not in alone["timings"]
        answer = _query(client, collection, question=FOLLOW_UP,
                        history=[{"question": FIRST.question, "answer": FIRST.answer}])
    conversation = answer["trace"]["conversation"]
    print("standalone:", conversation["standalone_question"], "| answer:", answer["answer"])
    assert conversation["question"] == FOLLOW_UP and conversation["turns"] == 1
    assert conversation["prompt"] == "condense"
    assert conversation["prompt_sha256"] == PromptLibrary.load().hashes()["condense"]
    assert conversation["rewritten"] is True
    # The rewrite names who "he" is, so retrieval finds the passage about Sam.
    assert "Sam" in conversation["standalone_question"]
    assert answer["sources"][0]["document"] == "plants.md"
    assert answer["timings"]["condense_ms"] > 0 and answer["usage"]["prompt_tokens"] > 0


def test_without_a_model_the_follow_up_is_used_as_asked_and_the_trace_says_why(
    retrieval_runtime: Runtime
) -> None:
    rag = retrieval_runtime.rag()
    result = standalone_question(FOLLOW_UP, [FIRST], generator=None, prompts=rag.prompts)
    assert result.question == FOLLOW_UP
    assert result.trace["rewritten"] is False and result.trace["why"] == "no model is configured"
    assert standalone_question(FOLLOW_UP, [], generator=None, prompts=rag.prompts).trace == {}


@pytest.mark.parametrize(("reply", "expected"), [
    ("What does Sam do on Fridays?", "What does Sam do on Fridays?"),
    ('\n  Rewritten question: "What does Sam do?"\nExtra line', "What does Sam do?"),
    ("   \n", ""),
])
def test_the_models_reply_is_cleaned_to_one_question(reply: str, expected: str) -> None:
    assert clean_question(reply) == expected
