"""Latency of one ``POST /v1/query`` through llama.cpp and through vLLM, on Verity's own docs.

Opens a throwaway runtime (embedded Postgres in a temporary data directory, the
bundled embedder, the local llama.cpp server on the bundled GGUF), ingests
``docs/``, and asks the same question through two in-process apps that differ only
in their generator: the local llama.cpp server, and the vLLM server at
``--vllm-url``. After one warm-up request each, the backends alternate, so both see
the same load on a shared machine. Generation is greedy with the same token limit.

Usage (with vLLM already serving the converted model, see deploy/README.md)::

    .venv/bin/python deploy/vllm/bench_query.py --vllm-url http://127.0.0.1:8011/v1 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from fastapi.testclient import TestClient

from ingest.pipeline import IngestPipeline
from service.app import create_app
from verity.answering.runtime import Runtime, open_runtime
from verity.backends.generators import OpenAIChatGenerator
from verity.core.settings import ChunkingSettings, LLMSettings, Settings

REPO = Path(__file__).resolve().parents[2]
QUESTION = "How do I configure the database?"


def measure(client: TestClient, *, collection: str) -> dict[str, float]:
    """One /v1/query: wall seconds, generation seconds and token counts."""
    started = time.monotonic()
    r = client.post("/v1/query", json={"question": QUESTION, "collection": collection})
    wall = time.monotonic() - started
    r.raise_for_status()
    body = r.json()
    return {"wall_s": wall, "generate_s": body["timings"]["generate_ms"] / 1000,
            "prompt": body["usage"].get("prompt_tokens", 0),
            "tokens": body["usage"].get("completion_tokens", 0),
            "answered": float(body["status"] == "answered")}


def summarize(name: str, runs: list[dict[str, float]]) -> str:
    wall = statistics.median(r["wall_s"] for r in runs)
    gen = statistics.median(r["generate_s"] for r in runs)
    prompt = statistics.median(r["prompt"] for r in runs)
    tokens = statistics.median(r["tokens"] for r in runs)
    answered = sum(r["answered"] for r in runs)
    return (f"| {name} | {wall:.2f} | {gen:.2f} | {prompt:.0f} | {tokens:.0f} | "
            f"{answered:.0f}/{len(runs)} |")


def run(runtime: Runtime, *, vllm: OpenAIChatGenerator, repeat: int) -> None:
    pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder,
                              chunking=ChunkingSettings())
    assert pipeline.run([REPO / "docs"], collection="bench").ok
    apps = {"llama.cpp": create_app(runtime.settings, runtime=runtime),
            "vLLM (CPU)": create_app(runtime.settings, runtime=replace(runtime, generator=vllm))}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in apps}
    with ExitStack() as stack:
        clients = {name: stack.enter_context(TestClient(app)) for name, app in apps.items()}
        for client in clients.values():
            measure(client, collection="bench")  # warm-up: first prompt, caches, lazy loads
        for _ in range(repeat):
            for name, client in clients.items():
                runs[name].append(measure(client, collection="bench"))
    print("| backend | /v1/query median s | generation median s | prompt tokens | answer tokens "
          "| answered |")
    print("|---|---|---|---|---|---|")
    for name, result in runs.items():
        print(summarize(name, result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-url", required=True, help="e.g. http://127.0.0.1:8011/v1")
    parser.add_argument("--vllm-model", default="verity-vllm", help="served model name")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="verity-bench-") as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp))
        settings = settings.model_copy(update={
            "server": settings.server.model_copy(update={"auth": False}),
            "llm": settings.llm.model_copy(update={"timeout_s": 900}),
        })
        vllm = OpenAIChatGenerator(LLMSettings(model=args.vllm_model, timeout_s=900),
                                   base_url=args.vllm_url)
        with open_runtime(settings) as runtime:
            run(runtime, vllm=vllm, repeat=args.repeat)


if __name__ == "__main__":
    main()
