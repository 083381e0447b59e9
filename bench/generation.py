"""The answer model on the CPU: llama.cpp's kernels, then the time to the first answer token.

``kernels`` (llama-bench style): prompt processing (prefill) of 512- and 1024-token prompts
and decoding, in tokens/s, through ``llama_cpp.Llama`` with the local server's thread
count, for the bundled Q4_K_M GGUF and for Q4_0 and Q8_0 requantized from it by llama.cpp
(written once into the data directory). Each build is measured in its own process, builds
and formats taking turns round by round so load from other work falls on each alike:
``--old-lib`` is the library folder of another llama-cpp-python build (``llama_cpp/lib``
of the portable AVX2 wheel, say), loaded through ``LLAMA_CPP_LIB_PATH``; the installed
build is measured on each CPU back-end named in ``--variants`` (``auto`` is the one the
server would pick).

``service``: new questions, each asked once, through the whole pipeline (``open_runtime``,
``RagPipeline.stream``, the local llama.cpp server it starts) on ``docs/`` and on the first
PopQA questions with their passages, in a scratch data directory. Prints the time to the
first streamed token (question in to first token out: retrieval, packing, prefill) p50/p95,
and decoding tokens/s (one streamed chunk is one token), with the time split into preparation,
packing and request+prefill and the prompt's tokens by part. Questions alternate between a warm
prompt cache (llama.cpp keeps the last prompt's tokens and reuses the common prefix, here
the system prompt) and a cold one (a one-token prompt sent just before, so nothing is shared).
``--prompt-tokens 0,512`` asks each question once per prompt limit, limits taking turns;
``--pack-only`` stops before the request (the prompt's tokens, not the model's time).

    PYTHONPATH=. python bench/generation.py kernels --old-lib /tmp/old/llama_cpp/lib
    PYTHONPATH=. python bench/generation.py service --popqa ../shared/datasets/popqa_crag -n 20
    PYTHONPATH=. python bench/generation.py prompt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, where bench/ingest.py would hide
# the ingest package.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
DOCS = REPO / "docs"
QUANTS = ("q4_k_m", "q4_0", "q8_0")
PREFILL = (512, 1024)
DECODE = 64
DOCS_QUESTIONS = [
    "How does Verity count prompt tokens when packing sources?",
    "What does the circuit breaker do when the model server fails?",
    "Which settings configure hybrid retrieval fusion?",
    "How are personal data masked before the prompt is sent?",
    "What does corrective RAG do with an ambiguous retrieval?",
    "How do I serve the bundled model with vLLM?",
    "How long did CI take on the shared machine?",
    "What is the default chunk size for ingestion?",
    "How are API keys created and revoked?",
    "What does the evaluation harness report for each configuration?",
    "Which embedder backends are available and how fast are they?",
    "How are citations checked in an answer?",
    "What happens when a source is too long for the context window?",
    "How does binary quantisation with rescoring work in vector search?",
    "What does the /v1/query endpoint return?",
    "How is the reranker trained offline?",
]


def models(data_dir: Path) -> dict[str, Path]:
    """The bundled GGUF and its requantized formats, made once in ``data_dir``."""
    from verity.backends.models import GGUF_SHA256, requantize_gguf, resolve_gguf
    from verity.core.settings import BUNDLED_GGUF

    source = resolve_gguf(BUNDLED_GGUF, data_dir=data_dir)
    return {q: source if q == "q4_k_m" else requantize_gguf(
        source, quant=q, source_sha256=GGUF_SHA256, data_dir=data_dir) for q in QUANTS}


def measure(model: Path, *, threads: int, cpu_library: str | None) -> dict[str, Any]:
    """Prefill tokens/s at each prompt length and decode tokens/s, in this process."""
    if cpu_library:
        from verity.backends.llama_server import load_cpu_backend

        load_cpu_backend(Path(cpu_library))
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=2048, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))
    tokens = llm.tokenize(text.encode(), add_bos=False)[:max(PREFILL) + DECODE]
    llm.eval(tokens[:64])  # touch the weights once, untimed
    out: dict[str, Any] = {}
    for n in PREFILL:
        llm.reset()  # type: ignore[no-untyped-call]
        started = time.perf_counter()
        llm.eval(tokens[:n])
        out[f"prefill_{n}"] = n / (time.perf_counter() - started)
    llm.reset()  # type: ignore[no-untyped-call]
    llm.eval(tokens[:512])
    started = time.perf_counter()
    for token in tokens[512:512 + DECODE]:
        llm.eval([token])
    out["decode"] = DECODE / (time.perf_counter() - started)
    return out


def run_worker(build: tuple[str, dict[str, str], str | None], model: Path,
               threads: int) -> dict[str, Any]:
    """:func:`measure` in a fresh process with ``build``'s environment and CPU back-end."""
    _, env, library = build
    command = [sys.executable, __file__, "worker", "--model", str(model),
               "--threads", str(threads), *(["--cpu-library", library] if library else [])]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                          check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def builds(old_lib: Path | None, variants: list[str]) -> list[tuple[str, dict[str, str], str | None]]:
    """(label, environment, CPU back-end library) for each build to measure."""
    from verity.backends.llama_server import (
        cpu_backend_plan,
        cpu_variant_scores,
        cpu_variants,
        llama_lib_dir,
    )

    out: list[tuple[str, dict[str, str], str | None]] = []
    if old_lib is not None:
        out.append((f"old build ({old_lib.name})", {"LLAMA_CPP_LIB_PATH": str(old_lib)}, None))
    installed = cpu_variants(llama_lib_dir())
    if not installed:
        return [*out, ("installed build", {}, None)]
    scores = cpu_variant_scores(installed)
    for choice in variants:
        name = cpu_backend_plan(choice, scores=scores)[0]
        out.append((f"new build, {name}" + (" (auto)" if choice == "auto" else ""), {},
                    str(installed[name])))
    return out


def kernels(args: argparse.Namespace) -> None:
    from verity.core.settings import Settings

    settings = Settings()
    threads = settings.llm.threads or max(1, os.cpu_count() or 1)
    files = models(args.data_dir or settings.data_dir)
    runs = builds(args.old_lib, args.variants.split(","))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for build in runs:
            for quant, path in files.items():
                results.setdefault((build[0], quant), []).append(
                    run_worker(build, path, threads))
    print(f"threads {threads}, {args.rounds} rounds, median tokens/s, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"| build | weights | MiB | prefill {PREFILL[0]} | prefill {PREFILL[1]} | decode |")
    print("|---|---|---|---|---|---|")
    for (label, quant), rows in results.items():
        cells = [statistics.median(r[k] for r in rows)
                 for k in (f"prefill_{PREFILL[0]}", f"prefill_{PREFILL[1]}", "decode")]
        size = files[quant].stat().st_size / 2**20
        print(f"| {label} | {quant} | {size:.0f} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


def service(args: argparse.Namespace) -> None:
    from verity.answering.runtime import open_runtime
    from verity.core.settings import Settings

    with tempfile.TemporaryDirectory(prefix="verity-bench-generation-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        with open_runtime(settings, generator=not args.pack_only) as runtime:
            if args.pack_only:  # the local model's vocabulary counts, no server needed
                from dataclasses import replace

                from verity.backends.models import resolve_gguf
                from verity.backends.tokenizers import GgufTokenCounter

                runtime = replace(runtime, token_counter=GgufTokenCounter(
                    resolve_gguf(settings.llm.gguf_path, data_dir=settings.data_dir)))
            elif runtime.llm_server is None:
                sys.exit("unset VERITY_LLM__BASE_URL: this measures the local llama.cpp server")
            else:
                print(f"CPU back-end {runtime.llm_server.cpu_backend}, weights "
                      f"{settings.llm.quant}, threads {settings.llm.threads or os.cpu_count()}")
            sets = {"docs/": ("docs", DOCS_QUESTIONS[:args.n])}
            ingest_docs(runtime, "docs")
            if args.popqa:
                sets["PopQA"] = ("popqa", ingest_popqa(runtime, args.popqa, n=args.n, collection="popqa"))
            limits = ([None if v == "0" else int(v) for v in args.prompt_tokens.split(",")]
                      if args.prompt_tokens else [settings.llm.prompt_limit()])
            for label, (collection, questions) in sets.items():
                rows: dict[int | None, list[dict[str, Any]]] = {limit: [] for limit in limits}
                asked = 0
                for i, q in enumerate(questions):
                    # Limits take turns in rotating order; a question asked again always starts
                    # cold, so it cannot reuse its own earlier prompt.
                    for j, limit in enumerate(limits[i % len(limits):] + limits[:i % len(limits)]):
                        rows[limit].append(ask(runtime, q, collection=collection,
                                               cold=j > 0 or asked % 2 == 1, prompt_tokens=limit,
                                               generate=not args.pack_only))
                        asked += 1
                for limit, subset in rows.items():
                    report(f"{label} prompt limit {limit or 'none'}", subset)


def prompt(args: argparse.Namespace) -> None:
    """The answer prompt's tokens for ``docs/`` by part, from the chunks alone (no model, no
    store): what a prompt costs with ``top_k`` typical sources and what a limit leaves them."""
    from ingest.loaders import load_markdown
    from ingest.splitter import TokenSplitter
    from verity.answering.packing import TEMPLATE_MARGIN
    from verity.answering.pipeline import RagPipeline
    from verity.backends.embedders import build_embedder
    from verity.backends.models import resolve_gguf
    from verity.backends.tokenizers import GgufTokenCounter
    from verity.core.prompts import PromptLibrary
    from verity.core.settings import Settings
    from verity.core.types import Citation, Document

    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    counter = GgufTokenCounter(resolve_gguf(settings.llm.gguf_path, data_dir=settings.data_dir))
    splitter = TokenSplitter(build_embedder(settings.embedder, data_dir=settings.data_dir).tokenizer,
                             chunk_tokens=settings.chunking.chunk_tokens,
                             overlap_tokens=settings.chunking.overlap_tokens)
    rag = RagPipeline(store=None, embedder=None, generator=None,  # type: ignore[arg-type]
                      prompts=PromptLibrary.load(), settings=settings.retrieval,
                      token_counter=counter)
    system, user = (counter.count(m["content"]) for m in rag.messages(DOCS_QUESTIONS[0], []))
    costs = []
    for path in sorted(DOCS.glob("*.md")):
        title, sections = load_markdown(path.read_bytes(), path.name)
        doc = Document(source=f"docs/{path.name}", title=title, sections=tuple(sections),
                       content_hash=path.name)
        for chunk in splitter.split(doc, doc_id=path.name):
            source = Citation(n=1, document=doc.source, chunk_id=path.name, text=chunk.text,
                              title=title)
            costs.append(counter.count(rag.messages(DOCS_QUESTIONS[0], [source])[1]["content"])
                         - user)
    typical = statistics.median(costs)
    k = settings.retrieval.top_k
    print(f"system message {system} tokens, user message without sources {user}; "
          f"{len(costs)} chunks of docs/, a source costs median {typical:.0f} tokens "
          f"(mean {statistics.mean(costs):.0f}, p90 {sorted(costs)[len(costs) * 9 // 10]})")
    print(f"no limit: {system + user + k * typical:.0f} tokens with top_k {k} median sources")
    for limit in (768, 640, 512, 448, 384):
        room = limit - system - user - TEMPLATE_MARGIN
        print(f"limit {limit}: {room} tokens for sources, {room / typical:.1f} median sources")


def ingest_docs(runtime: Any, collection: str) -> None:
    from ingest.pipeline import IngestPipeline

    IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                   chunking=runtime.settings.chunking).run([DOCS], collection=collection)


def ingest_popqa(runtime: Any, path: Path, *, n: int, collection: str) -> list[str]:
    """Ingest the passages of the first ``n`` PopQA questions; return the questions."""
    import hashlib

    from eval.qa_datasets import load_qa
    from ingest.pipeline import IngestPipeline
    from verity.core.types import Document, Section

    data = load_qa(path).limited(n)
    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=runtime.settings.chunking)
    pipeline.ingest_documents((Document(source=p.id, title=p.title, sections=(Section(p.text),),
                                        content_hash=hashlib.sha256(p.text.encode()).hexdigest())
                               for p in data.corpus if p.text.strip()), collection=collection)
    return [e.question for e in data.examples]


def ask(runtime: Any, question: str, *, collection: str, cold: bool,
        prompt_tokens: int | None = None, generate: bool = True) -> dict[str, Any]:
    """Stream one answer; with ``cold``, first send a prompt that shares no prefix with it.

    Splits the time to the first token into preparation (embedding, retrieval), packing and
    the rest (the request, prefill of the prompt's new tokens, the first decoding step), and
    counts the prompt's tokens: the system message, the user message without sources, the
    sources. Without ``generate``, only prepares and packs (no request).
    """
    import httpx

    server = runtime.llm_server
    if cold and generate:
        httpx.post(f"{server.base_url}/completions", timeout=120, json={
            "model": server.model_name, "prompt": "0", "max_tokens": 1}).raise_for_status()
    rag = runtime.rag()
    rag.prompt_tokens = prompt_tokens
    started = time.perf_counter()
    prepared = rag.prepare(question, collection=collection)
    prepare_s = time.perf_counter() - started
    first, chunks = None, 0
    for part in rag.stream(prepared) if generate else [rag.pack(prepared)]:
        if isinstance(part, str) and part:
            first = first or time.perf_counter()
            chunks += 1
    ended = time.perf_counter()
    first = first or ended
    count = rag.token_counter.count
    system, user = (count(m["content"]) for m in rag.messages(question, []))
    context = prepared.trace.get("context", {})
    pack_s = prepared.timer.timings.get("pack_ms", 0.0) / 1000
    return {"cold": cold, "ttft": first - started, "chunks": chunks, "prepare": prepare_s,
            "pack": pack_s, "prefill": first - started - prepare_s - pack_s,
            "system_tokens": system, "user_tokens": user,
            "source_tokens": context.get("source_tokens", 0),
            "sources": context.get("sources_given", 0),
            "decode": (chunks - 1) / (ended - first) if chunks > 1 else 0.0}


def report(label: str, rows: list[dict[str, Any]]) -> None:
    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, round(q * (len(values) - 1)))]

    print(f"{label}: {len(rows)} questions, load average {os.getloadavg()[0]:.1f}")
    for name, subset in (("all", rows), ("warm prefix", [r for r in rows if not r["cold"]]),
                         ("cold prefix", [r for r in rows if r["cold"]])):
        ttft = [r["ttft"] for r in subset]
        decode = [r["decode"] for r in subset if r["decode"]]
        if ttft:
            print(f"  {name:12} TTFT p50 {statistics.median(ttft):.2f} s, p95 {pct(ttft, 0.95):.2f} s; "
                  f"decode {statistics.median(decode) if decode else 0:.1f} tokens/s; "
                  f"{statistics.median(r['chunks'] for r in subset):.0f} answer tokens (median)")
            med = {k: statistics.median(r[k] for r in subset)
                   for k in ("prepare", "pack", "prefill", "system_tokens", "user_tokens",
                             "source_tokens", "sources")}
            prompt = med["system_tokens"] + med["user_tokens"] + med["source_tokens"]
            print(f"  {'':12} medians: prepare {med['prepare']:.2f} s, pack {med['pack']:.3f} s, "
                  f"request+prefill {med['prefill']:.2f} s; prompt ~{prompt:.0f} tokens (system "
                  f"{med['system_tokens']:.0f}, user without sources {med['user_tokens']:.0f}, "
                  f"{med['sources']:.0f} sources {med['source_tokens']:.0f})"
                  + (f", ~{prompt / med['prefill']:.0f} prompt tokens/s" if med["prefill"] > 0.01
                     else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="prefill and decode tokens/s per build and weight format")
    k.add_argument("--old-lib", type=Path, help="llama_cpp/lib folder of another build")
    k.add_argument("--variants", default="auto,haswell", help="CPU back-ends of the installed build")
    k.add_argument("--rounds", type=int, default=2)
    k.add_argument("--data-dir", type=Path, help="where the model files are (default: Verity's)")
    s = sub.add_parser("service", help="time to first token through the pipeline")
    s.add_argument("--popqa", type=Path, help="popqa_crag folder (../shared/datasets/popqa_crag)")
    s.add_argument("-n", type=int, default=16, help="questions per set")
    s.add_argument("--prompt-tokens", default="",
                   help="comma-separated prompt limits to take turns (0: none), e.g. 0,512; "
                        "default: the settings' limit")
    s.add_argument("--pack-only", action="store_true",
                   help="retrieve and pack only: prompt tokens and time before the request")
    t = sub.add_parser("prompt", help="the docs/ answer prompt's tokens by part, no model")
    t.add_argument("--data-dir", type=Path, help="where the model files are (default: Verity's)")
    w = sub.add_parser("worker")
    w.add_argument("--model", type=Path, required=True)
    w.add_argument("--threads", type=int, required=True)
    w.add_argument("--cpu-library")
    args = parser.parse_args()
    if args.command == "worker":
        print(json.dumps(measure(args.model, threads=args.threads, cpu_library=args.cpu_library)))
    else:
        {"kernels": kernels, "service": service, "prompt": prompt}[args.command](args)


if __name__ == "__main__":
    main()
