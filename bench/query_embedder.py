"""Retrieval quality with queries embedded by another backend or precision than the documents.

``verity eval retrieval`` embeds queries and documents with the same embedder,
and Verity refuses to search int8 vectors with float ones. To decide whether
query and document precision can be chosen apart, this searches a collection
that ``verity eval retrieval`` already ingested (with the documents' embedder)
using the embedder that ``VERITY_EMBEDDER__*`` configures now for the queries,
and writes the same report, so ``verity eval compare`` gives paired-bootstrap
intervals against any other run. Nothing is ingested and the collection's
recorded precision is not checked: this is a measurement, not a supported setup.

Run from the repository root, e.g. int8 queries over float32 ONNX documents:

    VERITY_DATA_DIR=$DATA VERITY_EMBEDDER__BACKEND=onnx VERITY_EMBEDDER__PRECISION=int8 \
      PYTHONPATH=. python bench/query_embedder.py --dataset ../shared/datasets/scifact \
      --collection scifact-onnx-float32 --modes dense-float32,hybrid --out reports/q-int8
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from eval.datasets import load_beir
from eval.report import machine, provenance, write_reports
from eval.retrieval_runs import evaluate_in_process, retrieval_configs, run_setup
from eval.runs import command_line
from verity.answering.runtime import open_runtime
from verity.core.settings import ChunkingSettings, Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR dataset folder")
    parser.add_argument("--collection", required=True,
                        help="a collection holding the dataset's corpus, already ingested")
    parser.add_argument("--modes", default="dense-float32,hybrid")
    parser.add_argument("--depth", type=int, default=250)
    parser.add_argument("--oversample", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    settings = Settings()
    data = load_beir(args.dataset)
    configs = retrieval_configs(args.modes, None, remote=False, depth=args.depth,
                                oversample=args.oversample)
    setup = run_setup(configs, depth=args.depth, oversample=args.oversample,
                      chunking=settings.chunking)
    info = provenance(data, command=command_line(sys.argv[1:]), configuration=setup)

    def already_ingested(collection: str, chunking: ChunkingSettings) -> None:
        del collection, chunking

    with open_runtime(settings, generator=False, reranker=False) as runtime:
        result = evaluate_in_process(runtime, data, args.collection, configs, depth=args.depth,
                                     oversample=args.oversample, ingest=already_ingested)
    query = f"{settings.embedder.backend} {runtime.embedder.precision}"
    models = {"embedder": result.model, "query_embedder": query}
    markdown, _ = write_reports(result, replace(info, models=models, machine=machine()),
                                args.out, data)
    for m in result.modes:
        print(f"{m.mode} (queries: {query}): "
              + ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.items()))
    print(f"report: {markdown}")


if __name__ == "__main__":
    main()
