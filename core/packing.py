"""Context packing: fit the numbered sources into the generator's token budget.

The budget is the model's context window minus the prompt around the sources
(system rules, the question, the instructions), the answer's ``max_tokens`` and
a small margin for the chat template. Sources are taken in rank order while
they fit; the first one that does not fit is cut at a sentence boundary
(never a highly ranked source dropped to make room for a lower one), and the
rest are left out. Every count comes from a :class:`TokenCounter`: the model
server's own tokenizer where it has one, else a conservative estimate.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import httpx

from core.types import Citation

log = logging.getLogger(__name__)

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
TEMPLATE_MARGIN = 32  # chat-template tokens per request (role markers, separators)
MIN_TRUNCATED = 24  # a cut source shorter than this many tokens is not worth giving


class TokenCounter(Protocol):
    """Counts tokens as the generator's tokenizer would."""

    name: str

    def count(self, text: str) -> int:
        """The number of tokens in ``text``; never raises."""
        ...


class EstimateCounter:
    """A conservative estimate for servers whose tokenizer cannot be asked.

    BPE tokenizers give about 4 characters per English token; counting 3 (and
    at least one per word) over-estimates, so a packed prompt stays inside the
    window.

    Example:
        >>> EstimateCounter().count("How many tokens is this?")
        8
    """

    name = "estimate"

    def __init__(self, chars_per_token: float = 3.0) -> None:
        self.chars_per_token = chars_per_token

    def count(self, text: str) -> int:
        return max(math.ceil(len(text.encode()) / self.chars_per_token), len(text.split()))


class ServerTokenCounter:
    """The model server's own tokenizer over HTTP, with the estimate as fallback.

    Understands ``llama_cpp.server`` (``POST /extras/tokenize/count``), the
    llama.cpp server (``POST /tokenize``, ``{"content"}``) and vLLM
    (``POST /tokenize``, ``{"prompt"}``). The first endpoint that answers is
    kept; if none does, or one fails later, counts fall back to
    :class:`EstimateCounter` and ``name`` says so.

    Example:
        >>> ServerTokenCounter("http://127.0.0.1:8080/v1", model="qwen").count("hi there")
        2
    """

    def __init__(self, base_url: str, *, model: str | None = None, timeout_s: float = 10.0) -> None:
        self.root = re.sub(r"/v1/?$", "", base_url.rstrip("/"))
        self.model = model
        self._timeout = timeout_s
        self._fallback = EstimateCounter()
        self._ask: Callable[[str], int] | None = None
        self._failed = False
        self.name = "server"

    def count(self, text: str) -> int:
        if self._failed:
            return self._fallback.count(text)
        try:
            if self._ask is None:
                self._ask = self._discover(text)
            return self._ask(text)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            log.warning("tokenizer endpoint at %s failed (%s); estimating token counts", self.root, e)
            self._failed, self.name = True, self._fallback.name
            return self._fallback.count(text)

    def _discover(self, probe: str) -> Callable[[str], int]:
        for ask in (self._llama_cpp_python, self._llama_cpp, self._vllm):
            try:
                ask(probe)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
            return ask
        raise ValueError("no tokenize endpoint answered")

    def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        response = httpx.post(f"{self.root}{path}", json=body, timeout=self._timeout)
        response.raise_for_status()
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError("tokenize endpoint returned no object")
        return data

    def _llama_cpp_python(self, text: str) -> int:
        self.name = "llama_cpp.server"
        return int(self._post("/extras/tokenize/count", {"input": text})["count"])  # type: ignore[call-overload]

    def _llama_cpp(self, text: str) -> int:
        self.name = "llama.cpp"
        tokens = self._post("/tokenize", {"content": text})["tokens"]
        if not isinstance(tokens, list):
            raise ValueError("llama.cpp /tokenize returned no token list")
        return len(tokens)

    def _vllm(self, text: str) -> int:
        self.name = "vllm"
        body: dict[str, object] = {"prompt": text, "add_special_tokens": False}
        if self.model:
            body["model"] = self.model
        return int(self._post("/tokenize", body)["count"])  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class Packed:
    """The sources given to the model and how the budget was spent."""

    sources: list[Citation]
    budget: int
    used: int
    dropped: int
    truncated: int | None  # the number of the source that was cut, if one was

    def trace(self, counter: str) -> dict[str, object]:
        return {"budget_tokens": self.budget, "source_tokens": self.used,
                "sources_given": len(self.sources), "sources_dropped": self.dropped,
                "truncated_source": self.truncated, "token_counter": counter}


def pack_sources(sources: Sequence[Citation], *, budget: int,
                 cost: Callable[[Citation], int], count: Callable[[str], int]) -> Packed:
    """Sources in rank order while they fit in ``budget`` tokens; the first misfit is cut.

    Args:
        sources: numbered sources, best first.
        budget: tokens available to all sources together.
        cost: tokens one source takes in the prompt, wrapper included.
        count: tokens of a bare piece of text (used to cut a source by sentences).

    Returns:
        The sources to give, renumbered 1..n in the same order.
    """
    given: list[Citation] = []
    used = 0
    truncated = None
    for source in sources:
        need = cost(source)
        if used + need <= budget:
            given.append(source)
            used += need
            continue
        wrapper = need - count(source.text)
        cut = truncate(source.text, budget=budget - used - wrapper, count=count)
        if cut:
            given.append(replace(source, text=cut))
            used += wrapper + count(cut)
            truncated = len(given)
        break
    renumbered = [replace(s, n=i) for i, s in enumerate(given, start=1)]
    return Packed(renumbered, budget=budget, used=used, dropped=len(sources) - len(given),
                  truncated=truncated)


def truncate(text: str, *, budget: int, count: Callable[[str], int]) -> str:
    """The longest run of whole sentences from the start of ``text`` within ``budget`` tokens.

    When even the first sentence is too long, it is cut at a word boundary and
    marked with an ellipsis. Returns "" when fewer than ``MIN_TRUNCATED``
    tokens are available.
    """
    if budget < MIN_TRUNCATED:
        return ""
    kept: list[str] = []
    for sentence in _SENTENCE.split(text.strip()):
        candidate = " ".join([*kept, sentence])
        if count(candidate) > budget:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept)
    words = text.split()
    low, high = 0, len(words)
    while low < high:  # the most words whose prefix (with the ellipsis) fits
        mid = (low + high + 1) // 2
        if count(" ".join(words[:mid]) + " …") <= budget:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low]) + " …" if low else ""
