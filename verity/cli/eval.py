"""``verity eval``: measure Verity on benchmark datasets; the work is done by ``eval``'s runs
(:mod:`eval.retrieval_runs`, :mod:`eval.qa_runs`, :mod:`eval.calibration_runs`), which get
their corpus ingested through the callables made here."""

from __future__ import annotations

import logging
import re
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from verity.cli.common import EXIT_FAILED, clean_errors, configure_logging, fail, load_settings
from verity.core.settings import validate_collection_name

if TYPE_CHECKING:
    from eval.compare import Gate
    from eval.datasets import BeirDataset
    from eval.matrix import EvalConfig
    from eval.qa_datasets import QADataset
    from eval.qa_runs import QaTarget
    from eval.runs import Ingest
    from verity.answering.runtime import Runtime
    from verity.core.settings import ChunkingSettings, Settings

app = typer.Typer(
    help="Measure Verity on benchmark datasets; reports go to --out (default: a new folder "
         "under VERITY_EVAL__REPORTS_DIR, which the web page browses).",
    no_args_is_help=True,
)

FailIfOpt = Annotated[list[str] | None, typer.Option(
    "--fail-if", help="exit 1 when this holds, e.g. 'ndcg@10 < 0.70', 'crag:accuracy < 0.4' or, "
                      "against --baseline, 'delta(f1) < -0.02'; repeatable")]
BaselineOpt = Annotated[Path | None, typer.Option(
    help="an earlier run's report JSON (or its folder): print and record what changed, with "
         "paired bootstrap intervals")]
MatrixOpt = Annotated[Path | None, typer.Option(
    help="YAML file of configurations to run side by side (see docs/evaluation.md)")]
UrlOpt = Annotated[str | None, typer.Option(
    help="evaluate a running service at this URL (/v1/search, /v1/query) instead of in process")]
ApiKeyOpt = Annotated[str | None, typer.Option(help="API key for --url")]

BeirOpt = Annotated[Path, typer.Option(help="BEIR dataset folder (corpus.jsonl, queries.jsonl, "
                                            "qrels/)")]
RetrievalCollectionOpt = Annotated[str, typer.Option(
    help="collection to ingest the corpus into (with --url: the service's collection holding it)")]
RetrievalOutOpt = Annotated[Path | None, typer.Option(
    help="folder for retrieval.md, .json and .html (default: "
         "REPORTS_DIR/retrieval-DATASET-TIME)")]
ModesOpt = Annotated[str | None, typer.Option(
    help="'all' or comma-separated: bm25, dense-float32, dense-int8, dense-binary, "
         "dense-binary-rescore, hybrid, hybrid+rerank (default dense-float32,"
         "dense-binary-rescore); with --url: dense, bm25, hybrid (default all three)")]
LimitQueriesOpt = Annotated[int | None, typer.Option(min=1, help="evaluate only the first N "
                                                                 "judged queries")]
SplitOpt = Annotated[str, typer.Option(help="qrels split")]
DepthOpt = Annotated[int, typer.Option(min=1, help="chunks retrieved per query (with --url: "
                                                   "top_k, at most 50)")]
OversampleOpt = Annotated[int, typer.Option(min=1, help="binary candidates = depth x this")]
RerankTopNOpt = Annotated[int | None, typer.Option(
    min=1, help="hybrid+rerank: candidates reranked (default: VERITY_RERANK__TOP_N)")]
RerankFusionOpt = Annotated[str | None, typer.Option(
    help="hybrid+rerank: replace, rrf or interpolate (default: VERITY_RERANK__FUSION)")]
RerankWeightOpt = Annotated[float | None, typer.Option(
    min=0.0, max=1.0, help="hybrid+rerank with interpolate: the reranker's share "
                           "(default: VERITY_RERANK__WEIGHT)")]

QaDatasetOpt = Annotated[Path, typer.Option(
    help="QA JSONL, or a popqa_crag, squad_v2 or rgb folder (or an RGB zh_*.json file)")]
QaOutOpt = Annotated[Path | None, typer.Option(
    help="folder for reports and the per-question cache; pass it again to resume a run "
         "(default: REPORTS_DIR/qa-DATASET-TIME)")]
ConfigsOpt = Annotated[str | None, typer.Option(
    help="comma-separated: rag, crag, crag+replay (CRAG with the dataset's recorded "
         "web results); default rag,crag")]
QaCollectionOpt = Annotated[str | None, typer.Option(
    help="collection for the dataset's passages (default: qa-<dataset>)")]
LimitOpt = Annotated[int | None, typer.Option(min=1, help="only the first N questions")]
SkipOpt = Annotated[int, typer.Option(
    min=0, help="leave out the first N questions (e.g. those a threshold was fitted on); "
                "--limit then counts from there")]
JudgeOpt = Annotated[str, typer.Option(
    help="faithfulness judge: local (the generator; with --url the bundled model), none, or "
         "the /v1 URL of an OpenAI-compatible server")]
JudgeModelOpt = Annotated[str | None, typer.Option(help="model name on the judge server")]
JudgeKeyOpt = Annotated[str | None, typer.Option(help="API key of the judge server")]
GenerateOpt = Annotated[bool, typer.Option(
    help="--no-generate: record only whether each configuration would abstain (retrieval, "
         "evaluator and answerability check; no model server, no query rewrite); accuracy "
         "and citations are then not measured")]


@app.command("retrieval")
@clean_errors
def eval_retrieval(
    dataset: BeirOpt,
    collection: RetrievalCollectionOpt,
    out: RetrievalOutOpt = None,
    modes: ModesOpt = None,
    limit_queries: LimitQueriesOpt = None,
    split: SplitOpt = "test",
    depth: DepthOpt = 250,
    oversample: OversampleOpt = 4,
    matrix: MatrixOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    fail_if: FailIfOpt = None,
    baseline: BaselineOpt = None,
    rerank_top_n: RerankTopNOpt = None,
    rerank_fusion: RerankFusionOpt = None,
    rerank_weight: RerankWeightOpt = None,
) -> None:
    """Ingest a BEIR corpus (unchanged documents are skipped), search every query, write reports.

    Retrieval settings (BM25 k1/b, fusion, candidates, dense mode of hybrid) come from
    VERITY_RETRIEVAL__*; hybrid+rerank uses VERITY_RERANK__* (with kind none, the
    cross-encoder tuned by `verity tune reranker`); dense-int8 builds or loads the
    collection's FAISS index (VERITY_FAISS__*).
    """
    from eval.datasets import load_beir
    from eval.retrieval_runs import retrieval_configs, with_rerank

    configure_logging(logging.WARNING)
    settings = load_settings()
    try:
        gates = _gates(fail_if)
        name = validate_collection_name(collection)
        configs = retrieval_configs(modes, matrix, remote=url is not None, depth=depth,
                                    oversample=oversample)
        settings = with_rerank(settings, top_n=rerank_top_n, fusion=rerank_fusion,
                               weight=rerank_weight)
    except (ValueError, ValidationError) as e:
        raise fail(str(e)) from None
    data = load_beir(dataset, split=split).limited(limit_queries)
    out = out or default_out(settings, "retrieval", data.name)
    report = _retrieval_run(settings, data, name, configs, out=out, url=url, api_key=api_key,
                            depth=depth, oversample=oversample)
    _finish_run(report, baseline=baseline, gates=gates)


def default_out(settings: Settings, kind: str, dataset: str) -> Path:
    """A new folder for a run's reports under the reports folder: ``KIND-DATASET-UTCTIME``."""
    safe = re.sub(r"[^A-Za-z0-9_]+", "-", dataset).strip("-")[:80] or "dataset"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return settings.reports_dir / f"{kind}-{safe}-{stamp}"


def _retrieval_run(settings: Settings, data: BeirDataset, collection: str,
                   configs: list[EvalConfig],
                   *, out: Path, url: str | None, api_key: str | None, depth: int,
                   oversample: int) -> Path:
    """Search (the service at ``url``, or in process), write and print the reports; returns
    the report JSON's path."""
    from dataclasses import replace

    from eval.report import machine, provenance, write_reports
    from eval.retrieval_runs import evaluate_in_process, evaluate_service, run_setup
    from eval.runs import command_line
    from verity.answering.runtime import open_runtime

    setup = run_setup(configs, depth=depth, oversample=oversample, chunking=settings.chunking)
    # Taken before the run: the commit is that of the code that runs, not of a later checkout.
    info = provenance(data, command=command_line(sys.argv[1:]), configuration=setup)
    if url:
        result = evaluate_service(url, api_key, data, collection, configs, depth=depth)
        models = {"target": url}
    else:
        with open_runtime(settings, generator=False, reranker=False) as runtime:
            result = evaluate_in_process(runtime, data, collection, configs, depth=depth,
                                         oversample=oversample, ingest=_beir_ingest(runtime, data))
        models = {"embedder": result.model}
    markdown, report = write_reports(result, replace(info, models=models, machine=machine()),
                                     out, data)
    for m in result.modes:
        typer.echo(f"{m.mode}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.items())
                   + f", search p50 {m.p50_ms:.1f} ms, p95 {m.p95_ms:.1f} ms, index "
                   f"{m.index_total_bytes / 2**20:.1f} MiB")
    typer.echo(f"reports: {markdown} {report} {report.with_suffix('.html')}")
    return report


def _gates(texts: list[str] | None) -> list[Gate]:
    from eval.compare import parse_gates

    return parse_gates(texts or [])


def _finish_run(report: Path, *, baseline: Path | None, gates: list[Gate]) -> None:
    """Compare with the baseline (printed and recorded), then apply the gates."""
    from eval.compare import attach_baseline, load_run

    rows = None
    if baseline is not None:
        rows, markdown = attach_baseline(report, baseline)
        typer.echo(f"against baseline {baseline} (B − A, 95% paired bootstrap interval):")
        _print_rows(rows)
        typer.echo(f"comparison: {markdown}")
    _apply_gates(gates, load_run(report).summary, rows)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        typer.echo(f"  {r['config']} {r['metric']}: {r['a']:.4f} -> {r['b']:.4f}, {r['diff']:+.4f} "
                   f"[{r['ci95_low']:+.4f}, {r['ci95_high']:+.4f}]"
                   + ("  significant" if r["significant"] else ""))


def _apply_gates(gates: list[Gate], summary: dict[str, Any],
                 rows: list[dict[str, Any]] | None) -> None:
    from eval.compare import GateError, check_gates

    try:
        failures = check_gates(gates, summary, rows)
    except GateError as e:
        raise fail(str(e)) from None
    for failure in failures:
        typer.echo(f"gate failed: {failure}", err=True)
    if failures:
        raise typer.Exit(EXIT_FAILED)
    if gates:
        typer.echo(f"gates passed: {len(gates)}")


@app.command("compare")
@clean_errors
def eval_compare(
    run_a: Annotated[Path, typer.Argument(help="the earlier run: report JSON or its folder")],
    run_b: Annotated[Path, typer.Argument(help="the later run: report JSON or its folder")],
    out: Annotated[Path | None, typer.Option(
        help="also write the comparison here: an HTML page if the name ends in .html, "
             "else Markdown")] = None,
    fail_if: FailIfOpt = None,
) -> None:
    """What changed from RUN_A to RUN_B, per metric, with paired bootstrap intervals and significance.

    Gates name RUN_B's numbers ('ndcg@10 < 0.70') or the change ('delta(ndcg@10) < -0.02',
    'delta_high(accuracy) < 0' = a significant drop).
    """
    from eval.compare import compare_runs, load_run, render_comparison, render_comparison_html

    try:
        gates = _gates(fail_if)
    except ValueError as e:
        raise fail(str(e)) from None
    a, b = load_run(run_a), load_run(run_b)
    rows = compare_runs(a, b)
    text = render_comparison(a, b, rows)
    typer.echo(text, nl=False)
    if out is not None:
        page = render_comparison_html(a, b, rows) if out.suffix == ".html" else text
        out.write_text(page, encoding="utf-8")
    _apply_gates(gates, b.summary, rows)


@app.command("qa")
@clean_errors
def eval_qa(
    dataset: QaDatasetOpt,
    out: QaOutOpt = None,
    configs: ConfigsOpt = None,
    matrix: MatrixOpt = None,
    collection: QaCollectionOpt = None,
    limit: LimitOpt = None,
    skip: SkipOpt = 0,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    judge: JudgeOpt = "local",
    judge_model: JudgeModelOpt = None,
    judge_api_key: JudgeKeyOpt = None,
    fail_if: FailIfOpt = None,
    baseline: BaselineOpt = None,
    generate: GenerateOpt = True,
) -> None:
    """Answer a QA set with each configuration in one run; report accuracy, abstention, citations,
    context precision and faithfulness. Answers are cached per question: a rerun resumes."""
    from eval.qa_runs import answer_all, build_judge, summary_line, write_qa_reports

    configure_logging(logging.WARNING)
    settings = load_settings()
    gates, config_list, data, name = _qa_setup(dataset, configs, matrix, collection, limit=limit,
                                               skip=skip, url=url, judge=judge, fail_if=fail_if,
                                               generate=generate)
    out = out or default_out(settings, "qa", data.name)
    with ExitStack() as stack:
        target = _qa_target(stack, settings, data, name, config_list, url=url, api_key=api_key,
                            generate=generate)
        the_judge = build_judge(stack, settings, judge, target.generator, model=judge_model,
                                key=judge_api_key)
        results = answer_all(data, target, judge=the_judge, out=out, generate=generate)
    markdown, report = write_qa_reports(data, results, target.info, out, judge=the_judge,
                                        configs=config_list)
    for config, outcomes in results.items():
        typer.echo(summary_line(config, outcomes))
    typer.echo(f"reports: {markdown} {report} {report.with_suffix('.html')}")
    _finish_run(report, baseline=baseline, gates=gates)


def _qa_setup(dataset: Path, configs: str | None, matrix: Path | None, collection: str | None, *,
              limit: int | None, skip: int, url: str | None, judge: str,
              fail_if: list[str] | None,
              generate: bool) -> tuple[list[Gate], list[EvalConfig], QADataset, str]:
    """The gates, configurations, questions and collection of a QA run, each checked before
    any work."""
    from eval.qa_datasets import load_qa
    from eval.qa_runs import check_judge, qa_collection, qa_configs

    try:
        gates = _gates(fail_if)
        config_list = qa_configs(configs, matrix, remote=url is not None)
        check_judge(judge)
    except ValueError as e:
        raise fail(str(e)) from None
    data = load_qa(dataset).limited(limit, skip=skip)
    if not data.examples:
        raise fail(f"--skip {skip} leaves no questions")
    name = qa_collection(collection, data)
    if any(c.replay for c in config_list) and data.replay is None:
        raise fail(f"{data.name} ships no recorded search results for crag+replay")
    if url and not generate:
        raise fail("--no-generate runs the pipeline in-process; it cannot be combined with --url")
    return gates, config_list, data, name


def _qa_target(stack: ExitStack, settings: Settings, data: QADataset, collection: str,
               configs: list[EvalConfig], *, url: str | None, api_key: str | None,
               generate: bool) -> QaTarget:
    """What answers: the service at ``url``, or the pipeline in process (opened on ``stack``)."""
    from eval.qa_runs import in_process_target, service_target
    from eval.runs import command_line
    from verity.answering.runtime import open_runtime

    command = command_line(sys.argv[1:])
    if url:
        return service_target(stack, url, api_key, data, collection, configs, command=command)
    runtime = stack.enter_context(open_runtime(settings, generator=generate))
    return in_process_target(runtime, data, collection, configs, generate=generate,
                             ingest=_passages_ingest(runtime, data), command=command)


@app.command("calibrate")
@clean_errors
def eval_calibrate(
    dataset: Annotated[Path, typer.Option(help="QA JSONL, a popqa_crag folder or a squad_v2 folder")],
    collection: QaCollectionOpt = None,
    limit: LimitOpt = None,
    target: Annotated[float, typer.Option(min=0.5, max=1.0,
                                          help="precision each region must reach")] = 0.8,
    abstention: Annotated[bool, typer.Option(
        help="fit the answerability check (crag.answerable_min) on unanswerable questions "
             "instead of the evaluator's thresholds")] = False,
    max_false_abstain: Annotated[float, typer.Option(
        min=0.0, max=0.99, help="with --abstention: share of answerable questions it may abstain on")
    ] = 0.1,
) -> None:
    """Fit corrective RAG's evaluator thresholds, or its answerability check, on labelled questions.

    No answer is generated: both fits need only retrieval and the evaluator's scores.
    """
    from eval.calibration_runs import calibrate_abstention, calibrate_evaluator
    from eval.qa_datasets import load_qa
    from eval.qa_runs import qa_collection
    from verity.answering.runtime import open_runtime

    configure_logging(logging.WARNING)
    settings = load_settings()
    data = load_qa(dataset).limited(limit)
    name = qa_collection(collection, data)
    with open_runtime(settings, generator=False) as runtime:
        _passages_ingest(runtime, data)(name, settings.chunking)
        if abstention:
            lines = calibrate_abstention(runtime, data, name, max_false_abstain=max_false_abstain)
        else:
            lines = calibrate_evaluator(runtime, data, name, target=target)
    for line in lines:
        typer.echo(line)


def _beir_ingest(runtime: Runtime, data: BeirDataset) -> Ingest:
    """Ingests the BEIR corpus of ``data``; any document that fails stops the run."""
    from ingest.beir import load_beir_corpus
    from ingest.pipeline import IngestPipeline
    from ingest.progress import document_done, ingest_progress

    def ingest(collection: str, chunking: ChunkingSettings) -> None:
        pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder, chunking=chunking)
        started = time.perf_counter()
        documents = load_beir_corpus(data.path, fingerprint=pipeline.fingerprint)
        with ingest_progress(total=data.corpus_size) as reporter:
            report = pipeline.ingest_documents(documents, collection=collection,
                                               progress=document_done(reporter))
        report.seconds = time.perf_counter() - started
        for source, reason in report.failed:
            typer.echo(f"failed: {source}: {reason}", err=True)
        typer.echo(report.summary(), err=True)
        if not report.ok:
            raise fail(f"{len(report.failed)} documents could not be ingested; scores would be "
                       "wrong, so nothing was evaluated")

    return ingest


def _passages_ingest(runtime: Runtime, data: QADataset) -> Ingest:
    """Ingests the passages of ``data``, one document each."""
    import hashlib

    from ingest.pipeline import IngestPipeline
    from verity.core.types import Document, Section

    def ingest(collection: str, chunking: ChunkingSettings) -> None:
        pipeline = IngestPipeline(store=runtime.store, embedder=runtime.embedder, chunking=chunking)
        docs = (Document(source=p.id, title=p.title, sections=(Section(p.text),),
                         content_hash=hashlib.sha256(
                             f"{p.title}\n{p.text}\n{pipeline.fingerprint}".encode()).hexdigest())
                for p in data.corpus if p.text.strip())
        report = pipeline.ingest_documents(docs, collection=collection)
        typer.echo(f"corpus ({collection}): {report.summary()}", err=True)

    return ingest
