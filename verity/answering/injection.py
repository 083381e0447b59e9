"""Prompt-injection defence for retrieved text.

Two layers: sources are fenced in ``<source>`` tags and the system prompt
says their content is data, not instructions; and, because small models obey
whatever they read last, sentences that address the model with instructions
("ignore previous instructions", "you are now", "say X") are removed from a
source before it reaches the model. Removed sentences are reported so an
operator can see the document was tampered with.
"""

from __future__ import annotations

import re

from verity.core.sentences import split_sentences

_INSTRUCTION = re.compile(
    r"(ignore|disregard|forget|override)\s+(all\s+|any\s+|the\s+)?(previous|prior|above|earlier|"
    r"preceding|your|system)?\s*(instructions?|prompts?|rules|context|directions)"
    r"|\byou\s+are\s+now\b|\bnew\s+instructions?\b|\bsystem\s+prompt\b"
    r"|\b(respond|reply|answer)\s+(only\s+)?with\b|\bsay\s+[\"'“]"
    r"|</?source\b|<\|im_(start|end)\|>",
    re.IGNORECASE,
)


def neutralize(text: str) -> tuple[str, list[str]]:
    """``text`` without sentences that instruct the model, and the removed sentences."""
    kept, removed = [], []
    for sentence in split_sentences(text, before_any=True, newlines=True, collapse=False):
        if _INSTRUCTION.search(sentence):
            removed.append(sentence.strip())
        elif sentence.strip():
            kept.append(sentence.strip())
    if not removed:
        return text, []
    return " ".join(kept), removed
