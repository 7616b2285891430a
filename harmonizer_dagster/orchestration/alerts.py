"""Alerts: run failures (and, when asked, successes) and stalled runs reach people."""

import json
import time

import dagster as dg

from harmonizer_dagster.core.monitoring import loader_status
from harmonizer_dagster.core.notify import Alert
from harmonizer_dagster.core.warehouse.base import WarehouseBusy
from harmonizer_dagster.orchestration.resources import Notifier, WarehouseResource

# Seconds the sensor waits for a DuckDB warehouse a load holds; it looks again next tick.
SENSOR_LOCK_WAIT_S = 5.0

ALERT_SCOPES = ("location", "fleet", "off")


# The tags that say what a run loaded and where: a file, or a backfill's range of them.
DESCRIBING_TAGS = (
    "source",
    "dagster/partition",
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
    "harmonizer/host",
)


def _describe(run: dg.DagsterRun) -> str:
    tags = {k: v for k, v in run.tags.items() if k in DESCRIBING_TAGS}
    return f"job {run.job_name}, run {run.run_id}, tags {tags}"


def build_alert_sensors(scope: str, stall_minutes: int, host: str | None) -> list[dg.SensorDefinition]:
    """The alert sensors of this code location, by HARMONIZER_ALERTS:
    `location` watches this location's runs (a single machine); `fleet` watches every
    location's runs, for the central machine's location, which stays up when a Pi does not;
    `off` leaves alerting to that central location (the Pis)."""
    if scope not in ALERT_SCOPES:
        raise ValueError(f"HARMONIZER_ALERTS must be one of {', '.join(ALERT_SCOPES)}, not {scope!r}")
    if scope == "off":
        return []
    fleet = scope == "fleet"

    @dg.run_failure_sensor(
        name="run_failure_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=fleet,
        description="E-mails (and posts to Slack) every failed run.",
    )
    def run_failure_alerts(context: dg.RunFailureSensorContext, notifier: Notifier):
        error = context.failure_event.message or "no message"
        alert = Alert(
            f"[harmonizer] run failed: {context.dagster_run.job_name}", f"{_describe(context.dagster_run)}\n\n{error}"
        )
        delivered = notifier.send(alert)
        context.log.info(f"failure of {context.dagster_run.run_id} announced via {delivered or 'nothing configured'}")

    @dg.run_status_sensor(
        name="run_success_alerts",
        run_status=dg.DagsterRunStatus.SUCCESS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=fleet,
        description="Announces successful runs when HARMONIZER_NOTIFY_SUCCESS is true.",
    )
    def run_success_alerts(context: dg.RunStatusSensorContext, notifier: Notifier):
        if not notifier.notify_success:
            return dg.SkipReason("success notifications are off")
        notifier.send(
            Alert(f"[harmonizer] run succeeded: {context.dagster_run.job_name}", _describe(context.dagster_run))
        )
        return None

    return [run_failure_alerts, run_success_alerts, build_stall_sensor(stall_minutes, None if fleet else host)]


def build_stall_sensor(stall_minutes: float, host: str | None) -> dg.SensorDefinition:
    """Reports, once each, a started run whose event log has been silent for `stall_minutes`,
    and a version the warehouse's `loader_status` view marks STALLED (processing, with no
    heartbeat for HARMONIZER_STALL_MINUTES: its worker died, or hangs between checkpoints).
    Run monitoring (dagster.yaml) then fails runs whose worker died, and run retries take over."""

    @dg.sensor(
        name="stalled_run_alerts",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Reports runs with no progress for {stall_minutes} minutes.",
    )
    def stalled_run_alerts(context: dg.SensorEvaluationContext, notifier: Notifier, warehouse: WarehouseResource):
        cursor = json.loads(context.cursor or "{}")
        # An older cursor is the list of reported runs.
        reported = set(cursor if isinstance(cursor, list) else cursor.get("runs", []))
        versions = _stalled_versions(warehouse, context)
        known = set(cursor.get("versions", []) if isinstance(cursor, dict) else [])
        for name, row in versions.items():
            if name not in known:
                notifier.send(
                    Alert(
                        f"[harmonizer] load stalled: {name}",
                        f"{name} is processing with no heartbeat since "
                        f"{row['heartbeat_at'] or row['import_started_at']} "
                        f"({row['records_processed'] or 0:,} records done); see harmonizer status",
                    )
                )
                context.log.warning(f"version {name} stalled")
        # A Pi's location watches its own host's runs; the fleet's central location watches all.
        tags = {"harmonizer/host": host} if host else None
        started = context.instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags=tags))
        still_running = {record.dagster_run.run_id for record in started}
        stalled = []
        for record in started:
            run = record.dagster_run
            latest = context.instance.get_records_for_run(run.run_id, limit=1, ascending=False).records
            last_progress = latest[0].timestamp if latest else record.create_timestamp.timestamp()
            if run.run_id not in reported and time.time() - last_progress > stall_minutes * 60:
                stalled.append(run)
        for run in stalled:
            notifier.send(
                Alert(
                    f"[harmonizer] run stalled: {run.job_name}",
                    f"{_describe(run)}\nno progress for {stall_minutes} minutes",
                )
            )
            context.log.warning(f"run {run.run_id} stalled")
        runs = sorted((reported & still_running) | {r.run_id for r in stalled})
        context.update_cursor(json.dumps({"runs": runs, "versions": sorted(versions)}))
        if not stalled and not versions.keys() - known:
            return dg.SkipReason("no stalled runs or versions")
        return None

    return stalled_run_alerts


def _stalled_versions(warehouse: WarehouseResource, context: dg.SensorEvaluationContext) -> dict[str, dict]:
    """The versions loader_status marks STALLED, by source/partition; none this tick when a
    load holds the (DuckDB) warehouse for longer than a short wait."""
    store = warehouse.open()
    store.lock_wait = SENSOR_LOCK_WAIT_S
    try:
        store.migrate([])
        rows = loader_status(store, "STALLED")
    except WarehouseBusy as exc:
        context.log.info(f"stalled versions not checked this time: {exc}")
        return {}
    return {f"{row['source_type']}/{row['partition_key']}": row for row in rows}
