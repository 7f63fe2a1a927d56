"""Prometheus metrics (`GET /metrics`), in a registry of this server's own.

Counters move with the job events (stemd.http.events); the job counts and queue
length are read from the ledger when scraped, so they are right after a restart
too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stemd.ledger import JobState
from stemd.logs import Item

# Separation wall time, a few seconds (a short track on a GPU) to an hour
# No `_created` series beside every counter: they double the page for nothing a
# NAS dashboard plots.
disable_created_metrics()  # type: ignore[no-untyped-call]

SEPARATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class _LedgerCollector(Collector):
    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        model: Callable[[], tuple[float | None, float | None]],
    ) -> None:
        self._counts = counts
        self._model = model

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._counts()
        jobs = GaugeMetricFamily("stemd_jobs", "Jobs in the ledger by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "stemd_queue_length",
            "Jobs waiting for the model (files waiting to be hashed included)",
            value=counts.get(JobState.QUEUED.value, 0),
        )
        load, warm_up = self._model()
        if load is not None:
            yield GaugeMetricFamily(
                "stemd_model_load_seconds", "Time the model took to load", value=load
            )
        if warm_up is not None:
            yield GaugeMetricFamily(
                "stemd_model_warmup_seconds", "Time the model's first pass took", value=warm_up
            )


class Metrics:
    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        model: Callable[[], tuple[float | None, float | None]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_LedgerCollector(counts, model))
        self.separations = Counter("stemd_separations", "Tracks separated", registry=self.registry)
        self.failures = Counter(
            "stemd_failures", "Jobs and files that failed", registry=self.registry
        )
        self.duplicates = Counter(
            "stemd_duplicates", "Inputs served with stems that existed", registry=self.registry
        )
        self.audio_seconds = Counter(
            "stemd_audio_separated_seconds", "Seconds of audio separated", registry=self.registry
        )
        self.separation_time = Histogram(
            "stemd_separation_seconds",
            "Wall time per separation, decoding to the last chunk",
            buckets=SEPARATION_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "stemd_http_requests",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=self.registry,
        )

    def on_event(self, item: Item) -> None:
        name = item["event"]
        if name == "done":
            self.separations.inc()
            if "audio_seconds" in item:
                self.audio_seconds.inc(item["audio_seconds"])
            if "elapsed" in item:
                self.separation_time.observe(item["elapsed"])
        elif name == "failed":
            self.failures.inc()
        elif name == "duplicate":
            self.duplicates.inc()
