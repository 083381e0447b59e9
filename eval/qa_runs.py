"""Orchestrating a QA evaluation: its configurations, what answers them (a running service,
or the pipeline in process over the dataset's own passages), the faithfulness judge, the
answer cache's keys, the run with its progress and the reports.

Example:
    >>> configs = qa_configs("rag,crag", None, remote=False)
    >>> with ExitStack() as stack:
    ...     runtime = stack.enter_context(open_runtime(settings))
    ...     target = in_process_target(runtime, data, "qa-tiny", configs, generate=True,
    ...                                ingest=ingest_passages, command="verity eval qa ...")
    ...     results = answer_all(data, target, judge=None, out=Path("reports"), generate=True)
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from eval.faithfulness import LlmJudge
from eval.matrix import EvalConfig, load_matrix, parse_configs
from eval.outcomes import Outcome
from eval.qa import Answerer, run, summarize, write_reports
from eval.qa_datasets import QADataset
from eval.remote import SERVICE_MODES, ServiceClient, remote_answerer
from eval.report import git_commit, machine, prompt_hashes
from eval.runs import Ingest, chunk_collection, chunking_for
from verity.answering.crag import CorrectiveRag
from verity.answering.pipeline import Prepared, RagPipeline
from verity.answering.runtime import Runtime, start_generator
from verity.backends.connectors import ReplayConnector
from verity.backends.generators import OpenAIChatGenerator
from verity.backends.rerankers import build_reranker
from verity.core.progress import progress_by_label
from verity.core.prompts import PromptLibrary
from verity.core.protocols import Generator, Reranker
from verity.core.settings import LLMSettings, Settings, validate_collection_name
from verity.core.types import Answer

JUDGES = ("local", "none")
"""Judges ``--judge`` names; any other must be the http(s) URL of an OpenAI-compatible server."""

# Settings that decide an answer besides the configuration itself. Operational ones (paths,
# ports, timeouts, threads, batch sizes, devices) are left out, so a run can resume after they
# change; the CRAG section counts only for configurations that use CRAG.
ANSWER_SETTINGS: dict[str, set[str] | None] = {
    "embedder": {"model", "precision"},
    "chunking": {"chunk_tokens", "overlap_tokens"},
    "llm": {"base_url", "model", "gguf_path", "quant", "context_tokens", "max_tokens",
            "prompt_tokens", "tokenizer", "temperature"},
    "retrieval": None,
    "faiss": {"hnsw_threshold", "hnsw_m", "ef_search", "float_shortlist"},
    "rerank": {"kind", "model", "url", "top_n", "fusion", "weight", "max_length"},
    "pii": None,
    "crag": None,
}


@dataclass
class QaTarget:
    """What answers the questions: one answerer per configuration, the run's provenance,
    the answer cache's key of each configuration and, in process, the generator (a local judge
    may reuse it) with its name."""

    answerers: dict[str, Answerer]
    info: dict[str, Any]
    cache_keys: dict[str, str]
    generator: tuple[Generator, str] | None = None


def qa_configs(configs: str | None, matrix: Path | None, *, remote: bool) -> list[EvalConfig]:
    """The configurations of a run, from ``--configs`` (default ``rag,crag``) or a matrix file.

    Raises:
        ValueError: both, or a configuration this kind of run cannot vary.
        MatrixError: the matrix file or a preset name cannot be used.
    """
    if matrix is not None and configs is not None:
        raise ValueError("use --configs or --matrix, not both")
    config_list = load_matrix(matrix) if matrix is not None else parse_configs(configs or "rag,crag")
    for c in config_list:
        if c.mode is not None and c.mode not in SERVICE_MODES:
            raise ValueError(f"{c.name}: mode must be one of {', '.join(SERVICE_MODES)}")
        if c.replay and not c.crag:
            raise ValueError(f"{c.name}: replay needs crag: true")
        if remote and (c.replay or c.rerank or c.chunk_tokens):
            raise ValueError(f"{c.name}: with --url only crag, mode and top_k can vary; the "
                             "service's own settings decide the rest")
    return config_list


def check_judge(kind: str) -> None:
    """Raises ValueError unless ``kind`` is ``local``, ``none`` or an http(s) URL."""
    if kind not in JUDGES and not kind.startswith(("http://", "https://")):
        raise ValueError(f"--judge must be local, none or an http(s) URL, not {kind!r}")


def qa_collection(collection: str | None, data: QADataset) -> str:
    """The collection of the dataset's passages: ``collection``, or ``qa-<dataset>``.

    Raises:
        ConfigError: not a valid collection name.
    """
    return validate_collection_name(collection or f"qa-{data.name}".replace("_", "-"))


def cache_key(config: EvalConfig, url: str | None, settings: Mapping[str, Any] | None) -> str:
    """The answer cache's key for ``config``: against a service, its URL; in process, the
    settings that decide an answer, so that a rerun with other thresholds, models or prompts
    into the same ``--out`` asks again instead of reusing answers they did not produce."""
    where = url if url is not None else json.dumps(settings, sort_keys=True)
    return hashlib.sha256(f"{where}\n{config.fingerprint()}".encode()).hexdigest()[:10]


def answer_settings(runtime: Runtime, *, crag: bool) -> dict[str, Any]:
    """What besides the configuration decides an answer: :data:`ANSWER_SETTINGS`, the prompts'
    hashes and the model the generator serves."""
    sections = {name: getattr(runtime.settings, name).model_dump(mode="json", include=fields)
                for name, fields in ANSWER_SETTINGS.items() if crag or name != "crag"}
    return {**sections, "prompts": runtime.prompts.hashes(), "generator": runtime.generator_name}


def service_target(stack: ExitStack, url: str, api_key: str | None, data: QADataset,
                   collection: str, configs: Sequence[EvalConfig], *, command: str) -> QaTarget:
    """Answerers that ask the service at ``url``; its client is closed with ``stack``."""
    client = stack.enter_context(ServiceClient(url, api_key=api_key))
    answerers = {c.name: remote_answerer(client, collection=collection, crag=c.crag, top_k=c.top_k,
                                         mode=c.mode) for c in configs}
    info = {
        "dataset": data.name, "dataset_sha256": data.hash(), "questions": len(data.examples),
        "corpus_passages": len(data.corpus), "configs": ", ".join(c.name for c in configs),
        "target": f"service at {url}, collection {collection}",
        "models": {"generator": f"the service's (at {url})"},
        "prompt_hashes": prompt_hashes(),
        "git_commit": git_commit(), "machine": machine(), "command": command,
    }
    return QaTarget(answerers, info, {c.name: cache_key(c, url, None) for c in configs})


def in_process_target(runtime: Runtime, data: QADataset, collection: str,
                      configs: Sequence[EvalConfig], *, generate: bool, ingest: Ingest,
                      command: str) -> QaTarget:
    """Answerers over ``runtime``'s pipeline; the passages are ingested first (see
    :func:`qa_answerers`). Without ``generate`` they only decide whether to abstain."""
    answerers = qa_answerers(runtime, data, collection, configs, generate=generate, ingest=ingest)
    info = qa_provenance(runtime, data, [c.name for c in configs], command=command)
    info["generation"] = "on" if generate else "off: abstention decisions only"
    info["crag_answerable_min"] = runtime.settings.crag.answerable_min
    keys = {c.name: cache_key(c, None, answer_settings(runtime, crag=c.crag)) for c in configs}
    generator = None
    if generate and runtime.generator is not None:
        generator = (runtime.generator, runtime.generator_name)
    return QaTarget(answerers, info, keys, generator)


def qa_provenance(runtime: Runtime, data: QADataset, configs: Sequence[str], *,
                  command: str) -> dict[str, Any]:
    """Where an in-process run's numbers come from: data, models, prompts, settings, code."""
    settings = runtime.settings
    return {
        "dataset": data.name, "dataset_sha256": data.hash(), "questions": len(data.examples),
        "corpus_passages": len(data.corpus), "configs": ", ".join(configs),
        "embedder": runtime.embedder.name, "generator": runtime.generator_name,
        "crag_thresholds": f"upper {settings.crag.upper}, lower {settings.crag.lower}",
        "prompts": ", ".join(f"{k} {v[:12]}" for k, v in runtime.prompts.hashes().items()),
        "models": {"embedder": runtime.embedder.name, "generator": runtime.generator_name,
                   "reranker": settings.rerank.kind},
        "prompt_hashes": runtime.prompts.hashes(),
        "configuration": {"retrieval": settings.retrieval.model_dump(),
                          "chunking": settings.chunking.model_dump(),
                          "crag": settings.crag.model_dump(mode="json")},
        "git_commit": git_commit(), "machine": machine(), "command": command,
    }


def qa_answerers(runtime: Runtime, data: QADataset, collection: str,
                 configs: Sequence[EvalConfig], *, generate: bool = True,
                 ingest: Ingest) -> dict[str, Answerer]:
    """One answerer per configuration; a configuration with its own chunk size gets its own
    collection. Each collection is ingested here, once, through ``ingest``."""
    collections: dict[int | None, str] = {}
    out: dict[str, Answerer] = {}
    for config in configs:
        if config.chunk_tokens not in collections:
            name = chunk_collection(collection, config.chunk_tokens)
            ingest(name, chunking_for(runtime.settings.chunking, config.chunk_tokens))
            collections[config.chunk_tokens] = name
        out[config.name] = _answerer(runtime, data, collections[config.chunk_tokens], config,
                                     generate=generate)
    return out


def _answerer(runtime: Runtime, data: QADataset, collection: str, config: EvalConfig, *,
              generate: bool) -> Answerer:
    settings = runtime.settings
    retrieval = settings.retrieval.model_copy(update={
        k: v for k, v in {"mode": config.mode, "top_k": config.top_k}.items() if v is not None})
    rag = replace(runtime, reranker=_reranker(runtime, config)).rag()
    prepare: Callable[[str], Prepared]
    if not config.crag:
        prepare = functools.partial(rag.prepare, collection=collection, settings=retrieval)
    else:
        connectors = [ReplayConnector(*data.replay)] if config.replay and data.replay else []
        crag = CorrectiveRag(rag, settings.crag.model_copy(update={"enabled": True}), connectors)
        prepare = functools.partial(crag.prepare, collection=collection, retrieval=retrieval)
    return functools.partial(complete if generate else decide, rag, prepare)


def _reranker(runtime: Runtime, config: EvalConfig) -> Reranker | None:
    """The runtime's reranker, or the kind the configuration names."""
    if config.rerank is None:
        return runtime.reranker
    settings = runtime.settings
    return build_reranker(settings.rerank.model_copy(update={"kind": config.rerank}),
                          data_dir=settings.data_dir, prompts=runtime.prompts,
                          llm_base_url=getattr(runtime.generator, "base_url", None))


def complete(rag: RagPipeline, prepare: Callable[[str], Prepared], question: str) -> Answer:
    """The answer to ``question``, generated."""
    return rag.complete(prepare(question))


def decide(rag: RagPipeline, prepare: Callable[[str], Prepared], question: str) -> Answer:
    """Whether the pipeline would abstain, without generating: an empty answer otherwise."""
    prepared = prepare(question)
    if prepared.abstain:
        return rag.complete(prepared)
    return prepared.finish(Answer("", "answered", (), tuple(prepared.sources)))


def build_judge(stack: ExitStack, settings: Settings, kind: str,
                local: tuple[Generator, str] | None, *, model: str | None,
                key: str | None) -> LlmJudge | None:
    """The faithfulness judge ``kind`` names (see :data:`JUDGES`), or None for ``none``.

    ``local`` is the run's own generator and its name; without one (a run against a
    service) the bundled model is started, and stopped with ``stack``.
    """
    if kind == "none":
        return None
    prompts = PromptLibrary.load()
    if kind == "local":
        if local is not None:
            return LlmJudge(local[0], prompts, name=local[1])
        generator, server = start_generator(settings, stack)
        name = (f"{server.model_name} (local llama.cpp)" if server is not None
                else f"{generator.model} at {generator.base_url}")
        return LlmJudge(generator, prompts, name=name)
    llm = LLMSettings(base_url=kind, model=model, api_key=SecretStr(key or "none"), timeout_s=300)
    remote = OpenAIChatGenerator(llm)
    return LlmJudge(remote, prompts, name=f"{remote.model} at {kind}")


def answer_all(data: QADataset, target: QaTarget, *, judge: LlmJudge | None, out: Path,
               generate: bool) -> dict[str, list[Outcome]]:
    """Every question answered by every configuration, resuming from the cache under ``out``,
    with progress per configuration; the seconds it took go into ``target.info``."""
    started = time.perf_counter()
    with progress_by_label(unit="q") as progress:
        results = run(data, target.answerers, progress=progress,
                      cache_dir=out / ("cache" if generate else "cache-decisions"),
                      judge=judge, fingerprints=target.cache_keys)
    target.info["seconds"] = round(time.perf_counter() - started, 1)
    return results


def write_qa_reports(data: QADataset, results: Mapping[str, Sequence[Outcome]],
                     info: dict[str, Any], out: Path, *, judge: LlmJudge | None,
                     configs: Sequence[EvalConfig]) -> tuple[Path, Path]:
    """The run's reports (see :func:`eval.qa.write_reports`), the judge named in them."""
    judge_name = judge.name if judge else None
    info["models"] = {**info.get("models", {}), "judge": judge_name or "none"}
    return write_reports(data, results, info, out, judge=judge_name,
                         configs={c.name: c.changes() for c in configs})


def summary_line(config: str, outcomes: Sequence[Outcome]) -> str:
    """One configuration's headline numbers, as the run prints them."""
    s = summarize(outcomes)
    return (f"{config}: accuracy {s['accuracy']:.3f}, false abstain "
            f"{s['false_abstain']:.3f}, abstain on unanswerable "
            f"{s['abstain_unanswerable']:.3f}, citation validity "
            f"{s['citation_validity']:.3f}, context precision {s['context_precision']:.3f}, "
            f"faithfulness {s['faithfulness']:.3f}, p50 {s['latency_p50_ms']:.0f} ms")
