"""What the registry says about loads while and after they run: live progress, the
loader_status view, and the figures a metrics scrape serves.

A scrape reads a few grouped rows: one pass over the registry (a row per version) and the
tallies kept per source (tables.SOURCE_SUMS), never the issues themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harmonizer_dagster.core.pipeline import Progress
from harmonizer_dagster.core.settings import progress_seconds
from harmonizer_dagster.core.warehouse import Warehouse

# Seconds between two progress lines in a step's log.
PROGRESS_LOG_SECONDS = 5.0
# Upper bounds (seconds) of the load-duration histogram's buckets.
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 10800)
# Record outcomes by the registry column counting them.
OUTCOMES = {
    "imported": "records_imported",
    "inserted": "records_inserted",
    "updated": "records_updated",
    "unchanged": "records_unchanged",
    "rejected": "records_failed",
    "duplicate": "records_skipped",
}
# Version statuses the alert rules watch for a rise: a scrape serves them for every source, at 0
# when no version has them, so that a source's first failed or stalled version is a change and
# not a new series (which a rule's delta() would read as no change).
WATCHED_STATUSES = ("failed", "stalled")
LOADER_STATUS_COLUMNS = (
    "source_type",
    "partition_key",
    "source_version",
    "status",
    "health_status",
    "import_started_at",
    "import_completed_at",
    "records_processed",
    "records_expected",
    "records_imported",
    "records_failed",
    "records_per_minute",
    "heartbeat_at",
)


class ProgressReporter:
    """Hears a running load's checkpoints: records the first in the registry, then at most one
    every `record_every_s` (HARMONIZER_PROGRESS_SECONDS): records done, records expected from
    the share of the file read, a heartbeat. Tells `log` a line once the step has run `every_s`
    seconds, then at most every `every_s` seconds: a file read sooner logs none (its load's
    summary says what it came to)."""

    def __init__(
        self,
        warehouse: Warehouse,
        source_id: int,
        name: str,
        log: Callable[[str], None],
        every_s: float = PROGRESS_LOG_SECONDS,
        record_every_s: float | None = None,
    ):
        self.warehouse, self.source_id, self.name, self.log, self.every_s = warehouse, source_id, name, log, every_s
        self.record_every_s = progress_seconds() if record_every_s is None else record_every_s
        self.started = self.logged_at = time.monotonic()
        self.recorded_at: float | None = None

    def __call__(self, progress: Progress) -> None:
        share = progress.bytes_read / progress.bytes_total if progress.bytes_total else None
        expected = round(progress.records / share) if share else None
        now = time.monotonic()
        if self.recorded_at is None or now - self.recorded_at >= self.record_every_s:
            self.warehouse.record_progress(self.source_id, progress.records, expected)
            self.recorded_at = now
        if now - self.logged_at < self.every_s:
            return
        self.logged_at = now
        # A resumed step starts at its checkpoint: the rate counts what this run did.
        rate = (progress.records - progress.resumed) / max(now - self.started, 1e-6)
        read = f", {share:.0%} of the file's {progress.bytes_total:,} bytes read" if share is not None else ""
        self.log(f"{self.name}: {progress.records:,} records checkpointed{read}, {rate:,.0f} records/s")


def loader_status(warehouse: Warehouse, health: str | None = None) -> list[dict]:
    """The loader_status view's rows (the last 7 days' versions, newest first), optionally only
    those of one health status (STALLED)."""
    where, params = ("WHERE health_status = %s", [health]) if health else ("", [])
    rows = warehouse.query(f"SELECT {', '.join(LOADER_STATUS_COLUMNS)} FROM {{schema}}.loader_status {where}", params)
    return [dict(zip(LOADER_STATUS_COLUMNS, row, strict=True)) for row in rows]


SINK_STATUS_COLUMNS = (
    "source_type",
    "sink",
    "partition_key",
    "status",
    "produced",
    "changes",
    "dead_letters",
    "updated_at",
    "error_message",
)


def sink_status(warehouse: Warehouse) -> list[dict]:
    """Where each version of the last 7 days is in each sink (the versions not finished first,
    then the newest): its checkpoint, what it is due, and its last error."""
    rows = warehouse.query(
        f"SELECT {', '.join(SINK_STATUS_COLUMNS)} FROM {{schema}}.sink_checkpoints "
        "WHERE updated_at > now() - INTERVAL '7 days' ORDER BY status = 'completed', updated_at DESC, source_id DESC"
    )
    return [dict(zip(SINK_STATUS_COLUMNS, row, strict=True)) for row in rows]


@dataclass
class SourceFigures:
    """One source's figures as a scrape serves them."""

    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WATCHED_STATUSES, 0))
    records: dict[str, int] = field(default_factory=dict)
    # Loads within each of DURATION_BUCKETS (cumulative, as Prometheus counts them).
    durations: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_count: int = 0
    duration_sum: float = 0.0
    last_success: float | None = None
    last_publication: float | None = None
    issues: dict[tuple[str, str], int] = field(default_factory=dict)
    open_issues: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    # Held versions by a blocking check they failed (a version failing two counts under both).
    held: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningLoad:
    source: str
    partition_key: str
    records_processed: int
    records_expected: int | None
    file_size_bytes: int
    heartbeat: float | None


@dataclass
class SinkFigures:
    """One sink of one source: what its versions came to, by their sink status."""

    produced: int = 0
    dead_letters: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # producing, failed, completed


@dataclass(frozen=True)
class SinkPosition:
    """A version a sink has not finished (producing now, or failed): its checkpoint."""

    source: str
    sink: str
    partition_key: str
    status: str
    produced: int
    changes: int
    updated_at: float


@dataclass
class Snapshot:
    sources: dict[str, SourceFigures] = field(default_factory=dict)
    running: list[RunningLoad] = field(default_factory=list)
    sinks: dict[tuple[str, str], SinkFigures] = field(default_factory=dict)
    unfinished: list[SinkPosition] = field(default_factory=list)


def snapshot(warehouse: Warehouse) -> Snapshot:
    """The registry's figures, in one transaction; empty for a warehouse not migrated yet."""
    found = Snapshot()
    with warehouse.transaction():
        migrated = {
            name
            for (name,) in warehouse.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "AND table_name IN ('version_health', 'sink_checkpoints')",
                (warehouse.schema_name,),
            )
        }
        if "version_health" not in migrated:
            return found
        _versions(warehouse, found)
        _tallies(warehouse, found)
        _held(warehouse, found)
        # A warehouse the loads have not migrated to sinks yet (a scrape migrates nothing) has none.
        if "sink_checkpoints" in migrated:
            _sinks(warehouse, found)
        for row in warehouse.query(
            "SELECT source_type, partition_key, coalesce(records_processed, 0), records_expected, file_size_bytes, "
            "extract(epoch FROM heartbeat_at) FROM {schema}.sources WHERE status = 'processing'"
        ):
            source, key, done, expected, size, beat = row
            found.running.append(
                RunningLoad(source, key, int(done), None if expected is None else int(expected), int(size), beat)
            )
    return found


def _sinks(warehouse: Warehouse, found: Snapshot) -> None:
    """The sinks' checkpoints: totals per source and sink, and each version not finished."""
    rows = warehouse.query(
        "SELECT source_type, sink, status, partition_key, produced, changes, dead_letters, "
        "extract(epoch FROM updated_at) FROM {schema}.sink_checkpoints"
    )
    for source, sink, status, key, produced, changes, dead_letters, updated_at in rows:
        figures = found.sinks.setdefault((source, sink), SinkFigures())
        figures.produced += int(produced)
        figures.dead_letters += int(dead_letters)
        figures.versions[status] = figures.versions.get(status, 0) + 1
        if status != "completed":
            found.unfinished.append(
                SinkPosition(source, sink, key, status, int(produced), int(changes), float(updated_at))
            )


def _versions(warehouse: Warehouse, found: Snapshot) -> None:
    completed = "FILTER (WHERE status = 'completed')"
    sums = [f"coalesce(sum({column}) {completed}, 0)" for column in OUTCOMES.values()]
    buckets = [f"count(*) FILTER (WHERE status = 'completed' AND d <= {b})" for b in DURATION_BUCKETS]
    rows = warehouse.query(
        f"SELECT source_type, health_status, count(*), {', '.join(sums)}, {', '.join(buckets)}, "
        f"count(d) {completed}, coalesce(sum(d) {completed}, 0), "
        f"extract(epoch FROM max(import_completed_at) {completed}), extract(epoch FROM max(published_at)) "
        "FROM (SELECT source_type, health_status, status, published_at, import_completed_at, "
        f"{', '.join(OUTCOMES.values())}, extract(epoch FROM import_completed_at - import_started_at) AS d "
        "FROM {schema}.version_health) AS v GROUP BY source_type, health_status"
    )
    for source, health, versions, *rest in rows:
        figures = found.sources.setdefault(source, SourceFigures())
        figures.versions[health.lower()] = int(versions)
        records, rest = rest[: len(OUTCOMES)], rest[len(OUTCOMES) :]
        for outcome, value in zip(OUTCOMES, records, strict=True):
            figures.records[outcome] = figures.records.get(outcome, 0) + int(value)
        cumulative, (count, total, success, publication) = rest[: len(DURATION_BUCKETS)], rest[len(DURATION_BUCKETS) :]
        figures.durations = [a + int(b) for a, b in zip(figures.durations, cumulative, strict=True)]
        figures.duration_count += int(count)
        figures.duration_sum += float(total)
        figures.last_success = _latest(figures.last_success, success)
        figures.last_publication = _latest(figures.last_publication, publication)


def _latest(known: float | None, found: float | None) -> float | None:
    return known if found is None else max(float(found), known or 0.0)


def _held(warehouse: Warehouse, found: Snapshot) -> None:
    for source, checks in warehouse.query(
        "SELECT source_type, coalesce(held_because, '') FROM {schema}.sources WHERE status = 'held'"
    ):
        figures = found.sources.setdefault(source, SourceFigures())
        for check in checks.split(", "):
            figures.held[check] = figures.held.get(check, 0) + 1


def _tallies(warehouse: Warehouse, found: Snapshot) -> None:
    for source, kind, label, severity, total, pending in warehouse.query(
        "SELECT source_type, kind, label, severity, total, pending FROM {schema}.source_tallies WHERE total > 0"
    ):
        figures = found.sources.setdefault(source, SourceFigures())
        if kind == "issue":
            figures.issues[(label, severity)] = int(total)
            figures.open_issues += int(pending)
        else:
            figures.dead_letters[label] = int(pending)
