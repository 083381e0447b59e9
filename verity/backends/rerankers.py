"""Second-stage rerankers: re-score retrieved chunks against the question.

Three backends play the ``Reranker`` role (``verity.core.protocols``):

* :class:`CrossEncoderReranker` runs a sentence-transformers ``CrossEncoder`` in
  process: by default the one ``verity tune reranker`` trained on the user's own
  corpus and saved under ``DATA_DIR/models/reranker``.
* :class:`RemoteRerankReranker` posts to a ``/rerank`` endpoint (vLLM, Text
  Embeddings Inference or a Cohere-style API).
* :class:`LlmJudgeReranker` asks an OpenAI-compatible chat model whether each
  passage is relevant and scores it by the probability of "yes".

:func:`build_reranker` picks one from :class:`~verity.core.settings.RerankSettings`.
Everything here blocks; the service calls it from its thread pool.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from verity.core.errors import ConfigError, RerankError
from verity.core.prompts import PromptLibrary
from verity.core.protocols import Reranker
from verity.core.settings import RerankSettings
from verity.core.types import ScoredChunk

log = logging.getLogger(__name__)

RERANKER_SUBDIR = Path("models") / "reranker"
RERANK_KINDS = ("none", "cross-encoder", "remote", "llm-judge")


def default_reranker_dir(data_dir: Path) -> Path:
    """Where ``verity tune reranker`` saves its model and where the cross-encoder looks by default."""
    return data_dir / RERANKER_SUBDIR


def rerank_text(hit: ScoredChunk) -> str:
    """The passage a reranker reads for a hit: its heading path (or title), then its text."""
    context = hit.chunk.heading or hit.title
    text = hit.chunk.text
    return f"{context}\n{text}" if context and context not in text[:200] else text


def apply_scores(hits: Sequence[ScoredChunk], scores: Mapping[int, float], *,
                 top_k: int) -> list[ScoredChunk]:
    """The ``top_k`` hits by their new ``scores`` (by position in ``hits``), best first.

    Hits without a score are dropped; ties keep the earlier order. Each hit keeps
    its earlier per-stage scores and gains ``scores["rerank"]``.
    """
    order = sorted(scores, key=lambda i: (-scores[i], i))[:top_k]
    return [replace(hits[i], score=float(scores[i]),
                    scores={**hits[i].scores, "rerank": float(scores[i])}) for i in order]


class CrossEncoderReranker:
    """The ``Reranker`` protocol over a sentence-transformers ``CrossEncoder``.

    The constructor is cheap; the model loads on first use or in :meth:`warm_up`.

    Example:
        >>> reranker = CrossEncoderReranker(RerankSettings(kind="cross-encoder"),
        ...                                 data_dir=Path("~/.local/share/verity"))
        >>> reranker.rerank("what causes scurvy?", hits, top_k=5)[0].scores["rerank"]
        0.97
    """

    def __init__(self, settings: RerankSettings, *, data_dir: Path) -> None:
        self._settings = settings
        self._tuned = settings.model is None
        self.path = settings.model or str(default_reranker_dir(data_dir))
        self.name = settings.model or f"tuned ({self.path})"
        self._model: Any = None
        self._lock = threading.Lock()
        self._use = threading.Lock()

    def warm_up(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                self._model = self._load()

    def _load(self) -> Any:
        if self._tuned and not (Path(self.path) / "config.json").is_file():
            raise ConfigError(
                f"no tuned reranker in {self.path}: run `verity tune reranker --collection NAME`, "
                "or set VERITY_RERANK__MODEL to a Hugging Face id or a local model folder"
            )
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as e:
            raise ImportError("the cross-encoder reranker needs sentence-transformers: "
                              "pip install 'sentence-transformers>=5'") from e
        try:
            return CrossEncoder(self.path, device=self._settings.device,
                                max_length=self._settings.max_length)
        except Exception as e:
            raise ConfigError(
                f"could not load reranker {self.path!r} ({type(e).__name__}); set "
                "VERITY_RERANK__MODEL to a local folder or a Hugging Face id reachable from here"
            ) from e

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def rerank(self, query: str, hits: Sequence[ScoredChunk], *, top_k: int) -> list[ScoredChunk]:
        if not hits:
            return []
        self.warm_up()
        pairs = [(query, rerank_text(h)) for h in hits]
        try:
            # Fast tokenizers are not thread-safe ("Already borrowed"): one predict at a time.
            with self._use:
                scores = self._model.predict(pairs, batch_size=self._settings.batch_size,
                                             show_progress_bar=False, convert_to_numpy=True)
        except Exception as e:
            raise RerankError(f"reranker {self.name} failed ({type(e).__name__}); the server log "
                              "has the details") from e
        return apply_scores(hits, {i: float(s) for i, s in enumerate(scores)}, top_k=top_k)


def rerank_endpoint(url: str) -> str:
    """``url`` itself if it ends in ``/rerank``, else ``url`` + ``/rerank``."""
    url = url.rstrip("/")
    return url if url.endswith("/rerank") else f"{url}/rerank"


def parse_rerank_response(payload: Any, *, n: int) -> dict[int, float]:
    """Scores by document position from a ``/rerank`` answer.

    Accepts Cohere's and vLLM's ``{"results": [{"index", "relevance_score"}]}``
    and Text Embeddings Inference's ``[{"index", "score"}]``.

    Raises:
        RerankError: the payload has neither shape, or an index out of range.
    """
    items = payload.get("results") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        raise RerankError("rerank server answered without a 'results' list or a list of scores")
    scores: dict[int, float] = {}
    for item in items:
        try:
            index = int(item["index"])
            score = float(item["relevance_score"] if "relevance_score" in item else item["score"])
        except (KeyError, TypeError, ValueError) as e:
            raise RerankError(f"rerank server answered an unreadable result: {item!r:.200}") from e
        if not 0 <= index < n:
            raise RerankError(f"rerank server answered index {index} for {n} documents")
        scores[index] = score
    return scores


class RemoteRerankReranker:
    """The ``Reranker`` protocol over an HTTP ``/rerank`` endpoint.

    Sends ``{"model", "query", "documents", "top_n"}`` (plus ``texts``, the name
    Text Embeddings Inference uses for the documents) and reads either answer shape
    (see :func:`parse_rerank_response`).

    Example:
        >>> reranker = RemoteRerankReranker(RerankSettings(kind="remote",
        ...     url="http://vllm:8000/v1", model="BAAI/bge-reranker-v2-m3"))
        >>> reranker.rerank("what causes scurvy?", hits, top_k=5)
    """

    def __init__(self, settings: RerankSettings) -> None:
        if not settings.url:
            raise ConfigError("the remote reranker needs a URL: set VERITY_RERANK__URL")
        self._settings = settings
        self.url = rerank_endpoint(settings.url)
        self.name = settings.model or self.url
        key = settings.api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"} if key and key != "none" else {}
        self._client = httpx.Client(timeout=settings.timeout_s, headers=headers)

    def warm_up(self) -> None:
        """Nothing to load; the server is first reached by :meth:`rerank`."""

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()

    def rerank(self, query: str, hits: Sequence[ScoredChunk], *, top_k: int) -> list[ScoredChunk]:
        if not hits:
            return []
        documents = [rerank_text(h) for h in hits]
        body: dict[str, Any] = {"query": query, "documents": documents, "texts": documents,
                                "top_n": min(top_k, len(documents))}
        if self._settings.model:
            body["model"] = self._settings.model
        payload = self._post(body)
        return apply_scores(hits, parse_rerank_response(payload, n=len(hits)), top_k=top_k)

    def _post(self, body: dict[str, Any]) -> Any:
        try:
            response = self._client.post(self.url, json=body)
        except httpx.TimeoutException as e:
            raise RerankError(f"rerank server at {self.url} timed out after "
                              f"{self._settings.timeout_s}s") from e
        except httpx.HTTPError as e:
            raise RerankError(f"rerank server at {self.url} is unreachable "
                              f"({type(e).__name__}); check VERITY_RERANK__URL") from e
        if response.status_code >= 400:
            raise RerankError(f"rerank server at {self.url} answered HTTP {response.status_code}; "
                              "check VERITY_RERANK__URL, __MODEL and __API_KEY")
        try:
            return response.json()
        except ValueError as e:
            raise RerankError(f"rerank server at {self.url} answered non-JSON") from e


def yes_probability(top_logprobs: Mapping[str, float]) -> float:
    """P(yes) over the first answer token, renormalised over the yes and no tokens.

    Tokens are compared stripped and lower-cased, so "Yes", " yes" and "yes" all
    count. If neither appears among the top log-probabilities the score is 0.
    """
    yes = sum(math.exp(lp) for tok, lp in top_logprobs.items() if tok.strip().lower() == "yes")
    no = sum(math.exp(lp) for tok, lp in top_logprobs.items() if tok.strip().lower() == "no")
    return yes / (yes + no) if yes + no > 0 else 0.0


class LlmJudgeReranker:
    """The ``Reranker`` protocol over an OpenAI-compatible chat server, one question per passage.

    Each passage gets the ``rerank_judge`` prompt ("Is this passage relevant to
    the query? Answer yes or no.") with ``max_tokens=1, logprobs=true,
    top_logprobs=5`` and is scored by :func:`yes_probability`. A server that
    returns no log-probabilities for chat is asked through the completions API
    instead (``logprobs=5``), with the same prompt followed by ``Answer:``.
    Up to ``batch_size`` passages are judged concurrently.

    Example:
        >>> reranker = LlmJudgeReranker(RerankSettings(kind="llm-judge"),
        ...                             base_url="http://127.0.0.1:8080/v1", prompts=prompts)
        >>> reranker.rerank("what causes scurvy?", hits, top_k=5)[0].scores["rerank"]
        0.91
    """

    def __init__(self, settings: RerankSettings, *, base_url: str, prompts: PromptLibrary) -> None:
        import openai

        self._settings = settings
        self.base_url = base_url.rstrip("/")
        self._prompts = prompts
        self._model = settings.model
        self._client = openai.OpenAI(base_url=self.base_url,
                                     api_key=settings.api_key.get_secret_value(),
                                     timeout=settings.timeout_s, max_retries=0)
        self.use_completions = False
        self.name = f"llm-judge ({settings.model or 'default model'} at {self.base_url})"

    def warm_up(self) -> None:
        """Learn the model name from the server if none is configured."""
        _ = self.model

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()

    @property
    def model(self) -> str:
        if self._model is None:
            try:
                models = self._client.models.list().data
            except Exception as e:
                raise RerankError(f"judge server at {self.base_url} is unreachable") from e
            if not models:
                raise RerankError(f"judge server at {self.base_url} lists no models")
            self._model = str(models[0].id)
        return self._model

    def rerank(self, query: str, hits: Sequence[ScoredChunk], *, top_k: int) -> list[ScoredChunk]:
        if not hits:
            return []
        self.warm_up()
        workers = min(self._settings.batch_size, len(hits))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
            scores = list(pool.map(lambda h: self.judge(query, rerank_text(h)), hits))
        return apply_scores(hits, dict(enumerate(scores)), top_k=top_k)

    def judge(self, query: str, passage: str) -> float:
        """P(yes) that ``passage`` is relevant to ``query``, in [0, 1].

        Raises:
            RerankError: the server failed or timed out.
        """
        prompt = self._prompts.render("rerank_judge", query=query, passage=passage)
        if not self.use_completions:
            top = self._chat_top_logprobs(prompt)
            if top is not None:
                return yes_probability(top)
            log.warning("judge server at %s returns no chat log-probabilities; using the "
                        "completions API", self.base_url)
            self.use_completions = True
        return yes_probability(self._completion_top_logprobs(prompt))

    def _chat_top_logprobs(self, prompt: str) -> dict[str, float] | None:
        response = self._call(lambda: self._client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=1,
            temperature=0.0, logprobs=True, top_logprobs=5))
        logprobs = response.choices[0].logprobs if response.choices else None
        if logprobs is None or not logprobs.content:
            return None
        return {t.token: t.logprob for t in logprobs.content[0].top_logprobs}

    def _completion_top_logprobs(self, prompt: str) -> dict[str, float]:
        response = self._call(lambda: self._client.completions.create(
            model=self.model, prompt=f"{prompt}\nAnswer:", max_tokens=1, temperature=0.0,
            logprobs=5))
        logprobs = response.choices[0].logprobs if response.choices else None
        if logprobs is None or not logprobs.top_logprobs:
            raise RerankError(f"judge server at {self.base_url} returns no log-probabilities; "
                              "use a server that supports logprobs (vLLM, llama.cpp)")
        return dict(logprobs.top_logprobs[0])

    def _call(self, request: Any) -> Any:
        import openai

        try:
            return request()
        except openai.APITimeoutError as e:
            raise RerankError(f"judge server timed out after {self._settings.timeout_s}s") from e
        except openai.OpenAIError as e:
            raise RerankError(f"judge server at {self.base_url} failed: {type(e).__name__}") from e


def build_reranker(settings: RerankSettings, *, data_dir: Path, llm_base_url: str | None = None,
                   prompts: PromptLibrary | None = None) -> Reranker | None:
    """The reranker ``settings.kind`` names, or None for ``none``.

    Args:
        settings: the ``rerank`` section.
        data_dir: where the tuned cross-encoder lives (``models/reranker``).
        llm_base_url: the generator's server, used by ``llm-judge`` when
            ``settings.url`` is unset.
        prompts: the prompt library (``llm-judge`` only); loaded if not given.

    Raises:
        ValueError: an unknown kind.
        ConfigError: ``llm-judge`` with no server URL.
    """
    match settings.kind:
        case "none":
            return None
        case "cross-encoder":
            return CrossEncoderReranker(settings, data_dir=data_dir)
        case "remote":
            return RemoteRerankReranker(settings)
        case "llm-judge":
            url = settings.url or llm_base_url
            if not url:
                raise ConfigError("the llm-judge reranker needs a chat server: set "
                                  "VERITY_RERANK__URL or VERITY_LLM__BASE_URL")
            return LlmJudgeReranker(settings, base_url=url, prompts=prompts or PromptLibrary.load())
        case other:
            raise ValueError(f"unknown reranker kind {other!r}; use one of {', '.join(RERANK_KINDS)}")
