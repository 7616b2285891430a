"""`GET /metrics`: the registry's figures (core.monitoring) and the Dagster instance's runs in
the Prometheus text format, computed at each scrape: no push gateway, no counter kept in a
process that could lose it.

A DuckDB warehouse admits one process at a time: a scrape opens it briefly, waits at most
HARMONIZER_METRICS_LOCK_WAIT seconds for a load that holds it, and otherwise serves the
figures of its last scrape with `harmonizer_scrape_warehouse_busy 1`; the load never waits
for more than one scrape's transaction.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from harmonizer_dagster.core.monitoring import DURATION_BUCKETS, Snapshot, snapshot
from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.base import WarehouseBusy

log = logging.getLogger(__name__)
# The run statuses counted from the Dagster instance.
RUN_STATUSES = ("QUEUED", "STARTING", "STARTED", "CANCELING", "FAILURE")
Metric = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


class HarmonizerCollector(Collector):
    """Reads the warehouse (and the Dagster instance's `runs` figures, when given) at each scrape."""

    def __init__(self, warehouse: Warehouse, runs: Callable[[], RunFigures] | None = None):
        self.warehouse = warehouse
        self.warehouse.lock_wait = float(current("HARMONIZER_METRICS_LOCK_WAIT"))
        self.runs = runs
        self.last = Snapshot()
        self.last_success: float | None = None
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        with self.lock:
            busy = 0
            try:
                self.last, self.last_success = snapshot(self.warehouse), time.time()
            except WarehouseBusy:
                busy = 1
            found = self.last
        yield from _registry_metrics(found)
        if self.runs is not None:
            figures = self.runs()
            runs = GaugeMetricFamily(
                "harmonizer_dagster_runs", "Runs in the Dagster instance by status", labels=["status"]
            )
            for status, count in figures.counts.items():
                runs.add_metric([status.lower()], count)
            yield runs
            yield _gauge(
                "harmonizer_run_queue_oldest_seconds",
                "Seconds the oldest queued run has waited to start (0: none queued)",
                figures.oldest_queued_seconds,
            )
        yield _gauge(
            "harmonizer_scrape_warehouse_busy",
            "1 when a load held the warehouse and the values are the last scrape's",
            busy,
        )
        if self.last_success is not None:
            yield _gauge(
                "harmonizer_scrape_last_success_timestamp_seconds",
                "When the warehouse was last read",
                self.last_success,
            )
        yield _gauge("harmonizer_scrape_duration_seconds", "Seconds this scrape took", time.perf_counter() - started)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _registry_metrics(found: Snapshot) -> Iterator[Metric]:
    records = CounterMetricFamily(
        "harmonizer_records", "Records of completed loads by outcome", labels=["source", "outcome"]
    )
    issues = CounterMetricFamily(
        "harmonizer_issues",
        "Data-quality issues recorded by type and severity",
        labels=["source", "issue_type", "severity"],
    )
    open_issues = GaugeMetricFamily("harmonizer_open_issues", "Issues pending triage", labels=["source"])
    dead = GaugeMetricFamily(
        "harmonizer_dead_letters_pending", "Failed records not reprocessed yet", labels=["source", "error_type"]
    )
    versions = GaugeMetricFamily(
        "harmonizer_versions",
        "File versions by status (stalled: processing, no heartbeat)",
        labels=["source", "status"],
    )
    held = GaugeMetricFamily(
        "harmonizer_held_versions",
        "Versions held out of the tables by a failed blocking check, by check",
        labels=["source", "check"],
    )
    durations = HistogramMetricFamily(
        "harmonizer_load_duration_seconds", "Seconds from registration to completion of loads", labels=["source"]
    )
    success = GaugeMetricFamily(
        "harmonizer_last_success_timestamp_seconds", "When a load of the source last completed", labels=["source"]
    )
    published = GaugeMetricFamily(
        "harmonizer_last_publication_timestamp_seconds",
        "When a version of the source was last published",
        labels=["source"],
    )
    for source, figures in sorted(found.sources.items()):
        for outcome, value in figures.records.items():
            records.add_metric([source, outcome], value)
        for (issue_type, severity), value in sorted(figures.issues.items()):
            issues.add_metric([source, issue_type, severity], value)
        open_issues.add_metric([source], figures.open_issues)
        for error_type, value in sorted(figures.dead_letters.items()):
            dead.add_metric([source, error_type], value)
        for status, value in sorted(figures.versions.items()):
            versions.add_metric([source, status], value)
        for check, value in sorted(figures.held.items()):
            held.add_metric([source, check], value)
        buckets: list[tuple[str, float]] = [
            (str(b), c) for b, c in zip(DURATION_BUCKETS, figures.durations, strict=True)
        ]
        durations.add_metric([source], [*buckets, ("+Inf", figures.duration_count)], figures.duration_sum)
        if figures.last_success is not None:
            success.add_metric([source], figures.last_success)
        if figures.last_publication is not None:
            published.add_metric([source], figures.last_publication)
    yield from (records, issues, open_issues, dead, versions, held, durations, success, published)
    labels = ["source", "partition"]
    done = GaugeMetricFamily(
        "harmonizer_load_records_processed", "Records a running load has checkpointed", labels=labels
    )
    expected = GaugeMetricFamily(
        "harmonizer_load_records_expected",
        "Records a running load expects, from the share of the file read",
        labels=labels,
    )
    size = GaugeMetricFamily("harmonizer_load_file_size_bytes", "Size of the file a running load reads", labels=labels)
    beat = GaugeMetricFamily(
        "harmonizer_load_heartbeat_timestamp_seconds", "When a running load last checkpointed", labels=labels
    )
    for load in found.running:
        key = [load.source, load.partition_key]
        done.add_metric(key, load.records_processed)
        size.add_metric(key, load.file_size_bytes)
        if load.records_expected is not None:
            expected.add_metric(key, load.records_expected)
        if load.heartbeat is not None:
            beat.add_metric(key, float(load.heartbeat))
    yield from (done, expected, size, beat)
    yield from _sink_metrics(found)


def _sink_metrics(found: Snapshot) -> Iterator[Metric]:
    labels = ["source", "sink"]
    produced = CounterMetricFamily(
        "harmonizer_sink_records_produced", "Changes a sink's broker acknowledged, over every version", labels=labels
    )
    dead = CounterMetricFamily(
        "harmonizer_sink_dead_letters",
        "Changes a sink's broker refused (too large), kept as dead letters",
        labels=labels,
    )
    versions = GaugeMetricFamily(
        "harmonizer_sink_versions",
        "Versions by where their changes are in the sink (producing, failed: its last run's error, completed)",
        labels=[*labels, "status"],
    )
    for (source, sink), figures in sorted(found.sinks.items()):
        produced.add_metric([source, sink], figures.produced)
        dead.add_metric([source, sink], figures.dead_letters)
        for status, count in sorted(figures.versions.items()):
            versions.add_metric([source, sink, status], count)
    yield from (produced, dead, versions)
    position_labels = [*labels, "partition", "status"]
    position = GaugeMetricFamily(
        "harmonizer_sink_checkpoint_records",
        "Changes acknowledged up to the checkpoint of a version the sink has not finished",
        labels=position_labels,
    )
    due = GaugeMetricFamily(
        "harmonizer_sink_changes", "Changes due from a version the sink has not finished", labels=position_labels
    )
    when = GaugeMetricFamily(
        "harmonizer_sink_checkpoint_timestamp_seconds",
        "When that version's checkpoint last moved",
        labels=position_labels,
    )
    for version in found.unfinished:
        key = [version.source, version.sink, version.partition_key, version.status]
        position.add_metric(key, version.produced)
        due.add_metric(key, version.changes)
        when.add_metric(key, version.updated_at)
    yield from (position, due, when)


@dataclass(frozen=True)
class RunFigures:
    """The Dagster instance's runs: how many have each status, and how long the oldest
    queued run has waited (0 when none is queued), the figure a stuck run queue shows in."""

    counts: dict[str, int]
    oldest_queued_seconds: float


def dagster_run_figures() -> Callable[[], RunFigures] | None:
    """The instance's run figures, when this process has a Dagster instance (DAGSTER_HOME);
    None otherwise."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    import dagster as dg

    instance = dg.DagsterInstance.get()

    def figures() -> RunFigures:
        counts = {
            status: instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus[status]]))
            for status in RUN_STATUSES
        }
        oldest = instance.get_run_records(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]), limit=1, order_by="create_timestamp", ascending=True
        )
        waited = time.time() - oldest[0].create_timestamp.timestamp() if oldest else 0.0
        return RunFigures(counts, max(waited, 0.0))

    return figures


def metrics_endpoint(warehouse: Warehouse) -> Callable[[Request], Any]:
    """The `/metrics` route's handler over `warehouse`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HarmonizerCollector(warehouse, dagster_run_figures()))

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


def create_metrics_app(warehouse: Warehouse) -> Starlette:
    """`/metrics` alone, for a machine that runs no triage page."""
    return Starlette(routes=[Route("/metrics", metrics_endpoint(warehouse))])
