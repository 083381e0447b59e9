"""Prometheus metrics of one app, in a registry of its own (several apps can share a process).

Request counts and latencies are labelled by route template (``/v1/jobs/{job_id}``),
never by raw path or tenant, so the number of series stays bounded and no
tenant's name is exposed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from verity.backends.stores.outbox import Lag
from verity.core.types import JobStatus

log = logging.getLogger(__name__)

JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running", "done", "failed", "cancelled")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The counters and histograms the service records.

    Example:
        >>> metrics = Metrics()
        >>> metrics.observe_request(method="GET", route="/healthz", status=200, seconds=0.002)
        >>> body, content_type = metrics.render()
    """

    def __init__(self, *, job_counts: Callable[[], Mapping[str, int]] | None = None,
                 lexical_lag: Callable[[], Mapping[str, Lag | None]] | None = None,
                 dense_lag: Callable[[], Mapping[str, Lag | None]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("verity_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("verity_http_request_duration_seconds",
                                 "HTTP request latency by route and status",
                                 ["method", "route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stages = Histogram("verity_stage_duration_seconds",
                                "Pipeline stage latency (embed, dense, bm25, fusion, generate, ...)",
                                ["operation", "stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("verity_llm_tokens", "Model tokens used by answers", ["kind"],
                              registry=r)
        self.answers = Counter("verity_answers", "Answers by status", ["status"], registry=r)
        self.crag_actions = Counter("verity_crag_actions", "Corrective RAG grades of retrievals",
                                    ["action"], registry=r)
        self.jobs_enqueued = Counter("verity_ingest_jobs_enqueued", "Ingestion jobs queued",
                                     registry=r)
        self.files_enqueued = Counter("verity_ingest_files_enqueued",
                                      "Files uploaded for ingestion", registry=r)
        if job_counts is not None:
            r.register(JobsCollector(job_counts))
        if lexical_lag is not None:
            r.register(IndexLagCollector(lexical_lag, kind="lexical"))
        if dense_lag is not None:
            r.register(IndexLagCollector(dense_lag, kind="dense"))

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_timings(self, operation: str, timings: Mapping[str, float]) -> None:
        """Record stage latencies from a ``timings`` dict (``embed_ms``: 12.5, ...)."""
        for key, ms in timings.items():
            self.stages.labels(operation, key.removesuffix("_ms")).observe(ms / 1000)

    def observe_answer(self, *, status: str, usage: Mapping[str, int],
                       timings: Mapping[str, float], action: str = "") -> None:
        """Count an answer by status (and CRAG action), its tokens and its stage latencies."""
        self.answers.labels(status).inc()
        if action:
            self.crag_actions.labels(action).inc()
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind).inc(usage.get(f"{kind}_tokens", 0))
        self.observe_timings("query", timings)

    def observe_upload(self, *, files: int) -> None:
        """Count one queued ingestion job of ``files`` files."""
        self.jobs_enqueued.inc()
        self.files_enqueued.inc(files)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class JobsCollector(Collector):
    """``verity_ingest_jobs{status}``: jobs per status in the database, read at scrape time.

    Read from the database, so it also counts jobs run by standalone workers.
    When the database does not answer, the gauge is left out of that scrape.
    """

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("verity_ingest_jobs", "Ingestion jobs by status", labels=["status"])

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._counts()
        except Exception:
            log.warning("metrics: could not count ingestion jobs", exc_info=True)
            return
        gauge = GaugeMetricFamily("verity_ingest_jobs", "Ingestion jobs by status",
                                  labels=["status"])
        for status in JOB_STATUSES:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge


class IndexLagCollector(Collector):
    """How far this process's lexical (tantivy) or dense (in-memory) indexes are behind
    PostgreSQL, read at scrape time.

    ``verity_<kind>_index_lag_seconds`` is the largest lag of any index (the age of the
    oldest change not yet applied), ``verity_<kind>_index_lag_changes`` the changes not yet
    applied in all of them, ``verity_<kind>_indexes{state}`` how many are ready or still
    building (their searches use PostgreSQL). No series names a tenant or collection;
    ``/readyz`` lists each index.
    """

    def __init__(self, lag: Callable[[], Mapping[str, Lag | None]], *, kind: str) -> None:
        self._lag = lag
        self._kind = kind

    def describe(self) -> Iterator[Metric]:
        yield from self._families({})

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._lag())

    def _families(self, lags: Mapping[str, Lag | None]) -> Iterator[Metric]:
        kind = self._kind
        ready = [lag for lag in lags.values() if lag is not None]
        yield GaugeMetricFamily(f"verity_{kind}_index_lag_seconds",
                                f"Age of the oldest change a {kind} index has not applied "
                                "(largest over this process's indexes)",
                                value=max((lag.seconds for lag in ready), default=0.0))
        yield GaugeMetricFamily(f"verity_{kind}_index_lag_changes",
                                f"Changes not yet applied to this process's {kind} indexes",
                                value=sum(lag.changes for lag in ready))
        states = GaugeMetricFamily(f"verity_{kind}_indexes", f"{kind.capitalize()} indexes by state",
                                   labels=["state"])
        states.add_metric(["ready"], len(ready))
        states.add_metric(["building"], len(lags) - len(ready))
        yield states
