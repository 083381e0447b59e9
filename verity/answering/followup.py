"""Follow-up questions: rewritten into standalone ones with the conversation before retrieval.

"And on Fridays?" retrieves nothing useful on its own; with the conversation so far the
model rewrites it ("What does Sam do on Fridays?") and retrieval and the answer use that.
The rewrite is recorded in the trace with its prompt's name and hash; when the model is
unavailable or answers with nothing, the question is used as asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from verity.answering.pii import PiiVault
from verity.core.errors import GenerationError
from verity.core.prompts import PromptLibrary
from verity.core.protocols import Generator
from verity.core.types import Turn

PROMPT = "condense"
MAX_TURNS = 3  # the last turns only: a small model's context holds little more
MAX_ANSWER_CHARS = 600
MAX_QUESTION_CHARS = 1000
_CITATION = re.compile(r"\s*\[\d+\]")
_LABEL = re.compile(r"^(rewritten question|standalone question|question)\s*:\s*", re.IGNORECASE)


@dataclass
class Standalone:
    """The question retrieval and the answer use, and what the rewrite cost and did."""

    question: str
    trace: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)


def standalone_question(question: str, history: Sequence[Turn], *, generator: Generator | None,
                        prompts: PromptLibrary, vault: PiiVault | None = None) -> Standalone:
    """``question`` rewritten to stand alone, given the earlier ``history`` (oldest first).

    Without history the question is returned as asked, with no trace. Text the model sees
    is masked with ``vault`` when the collection's text must be.
    """
    if not history:
        return Standalone(question)
    trace: dict[str, Any] = {"question": question, "turns": len(history), "prompt": PROMPT,
                             "prompt_sha256": prompts.hashes()[PROMPT]}
    if generator is None:
        return Standalone(question, {**trace, "standalone_question": question,
                                     "rewritten": False, "why": "no model is configured"})

    def mask(text: str) -> str:
        return vault.mask(text) if vault else text

    turns = [{"question": mask(t.question[:MAX_QUESTION_CHARS]),
              "answer": mask(_CITATION.sub("", t.answer)[:MAX_ANSWER_CHARS])}
             for t in history[-MAX_TURNS:]]
    prompt = prompts.render(PROMPT, history=turns, question=mask(question))
    try:
        generation = generator.generate([{"role": "user", "content": prompt}], max_tokens=64)
    except GenerationError:
        return Standalone(question, {**trace, "standalone_question": question,
                                     "rewritten": False, "why": "the model is unavailable"})
    text = vault.unmask(generation.text) if vault else generation.text
    rewritten = clean_question(text)
    usage = {"prompt_tokens": generation.prompt_tokens,
             "completion_tokens": generation.completion_tokens}
    if not rewritten:
        return Standalone(question, {**trace, "standalone_question": question, "rewritten": False,
                                     "why": "the model's rewrite was empty"}, usage)
    return Standalone(rewritten, {**trace, "standalone_question": rewritten,
                                  "rewritten": rewritten != question}, usage)


def clean_question(text: str) -> str:
    """The first non-blank line of the model's reply, without a label or quotes."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return _LABEL.sub("", line).strip().strip('"').strip()[:MAX_QUESTION_CHARS]
