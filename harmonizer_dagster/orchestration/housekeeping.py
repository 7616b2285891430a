"""Keeps a deployment that runs for years flat on disk: a daily job removes the run history
and step output nobody needs any more, and the staging failed loads left behind. Sensor and
schedule ticks are purged by Dagster itself (`retention:` in the instance files).

What may go from the instance without changing what the UI shows of an asset: a partition's
status is read from its latest materialization, its latest planned materialization (a failed
one shows the partition failed) and its latest check evaluations. A run is deleted only when
it is older than the history kept and every asset partition it planned, materialized or
checked was materialized again by a later run; runs that touched no asset (triage, reports,
housekeeping, a run that failed before its first asset) go once they are old enough.
"""

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import FINISHED_STATUSES, RunsFilter
from pydantic import Field

from harmonizer_dagster.core.backup import backup, instance_url, prune
from harmonizer_dagster.core.housekeeping import sweep_staging
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource

# The events that make a run part of an asset partition's status.
ASSET_EVENTS = {
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    DagsterEventType.ASSET_CHECK_EVALUATION,
}
PAGE = 100


class HousekeepingConfig(dg.Config):
    """How long each kind of record is kept, in days."""

    run_history_days: float = 90
    step_output_days: float = 30
    staging_days: float = 7


def _touched(instance: dg.DagsterInstance, run_id: str) -> tuple[set[tuple[dg.AssetKey, str | None]], float]:
    """The asset partitions a run planned, materialized or checked, and when its last such event was."""
    touched: set[tuple[dg.AssetKey, str | None]] = set()
    last = 0.0
    for record in instance.get_records_for_run(run_id, of_type=ASSET_EVENTS).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        last = max(last, record.timestamp)
        data = event.event_specific_data
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            touched.add((data.asset_key, data.partition))
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED and data.partitions_subset:
            touched.update((data.asset_key, key) for key in data.partitions_subset.get_partition_keys())
        else:
            touched.add((event.asset_key, event.partition))
    return touched, last


def _materialized_again(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, run_id: str, after: float
) -> bool:
    """Whether another run materialized the asset partition after the given time. (Times, not
    storage ids: an SQLite instance numbers each run's events on their own.)"""
    records_filter = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
    latest = instance.fetch_materializations(records_filter, limit=1).records
    return bool(latest) and latest[0].run_id != run_id and latest[0].timestamp > after


def _old_runs(instance: dg.DagsterInstance, before: float) -> Iterable[dg.RunRecord]:
    """Finished runs last updated before the given time, oldest first, page by page."""
    cursor = None
    filters = RunsFilter(statuses=list(FINISHED_STATUSES), updated_before=_utc(before))
    while records := instance.get_run_records(filters=filters, limit=PAGE, cursor=cursor, ascending=True):
        yield from records
        cursor = records[-1].dagster_run.run_id


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def delete_superseded_runs(instance: dg.DagsterInstance, older_than_days: float, now: float | None = None) -> int:
    """Deletes old runs whose every asset partition a later run materialized again; returns how many."""
    before = (time.time() if now is None else now) - older_than_days * 86400
    doomed = []
    for record in _old_runs(instance, before):
        run_id = record.dagster_run.run_id
        touched, last = _touched(instance, run_id)
        if all(_materialized_again(instance, key, partition, run_id, last) for key, partition in touched):
            doomed.append(run_id)
    for run_id in doomed:
        instance.delete_run(run_id)
    return len(doomed)


def delete_step_output(instance: dg.DagsterInstance, older_than_days: float, now: float | None = None) -> int:
    """Deletes what the steps of old runs printed (the run itself stays); returns for how many runs."""
    before = (time.time() if now is None else now) - older_than_days * 86400
    runs = 0
    for record in _old_runs(instance, before):
        instance.compute_log_manager.delete_logs(prefix=[record.dagster_run.run_id])
        runs += 1
    return runs


@dg.op(description="Deletes old run history, step output and abandoned staging.")
def sweep(context: dg.OpExecutionContext, config: HousekeepingConfig, landing: LandingZone) -> None:
    instance = context.instance
    step_output = delete_step_output(instance, config.step_output_days)
    runs = delete_superseded_runs(instance, config.run_history_days)
    staged = sweep_staging(landing.staging_path, config.staging_days)
    context.log.info(
        f"deleted {runs} run(s) past {config.run_history_days:g} days that no partition's status needs, "
        f"the step output of {step_output} run(s) past {config.step_output_days:g} days, and "
        f"{staged.entries} abandoned staging folder(s) ({staged.bytes:,} bytes) past {config.staging_days:g} days"
    )
    context.add_output_metadata(
        {"runs_deleted": runs, "step_output_deleted": step_output, "staging_removed": staged.entries}
    )


@dg.job(description="Keeps the instance and the staging disk flat: see docs/production.md, Operating it.")
def housekeeping() -> None:
    sweep()


def build_housekeeping_schedule(status: dg.DefaultScheduleStatus) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="housekeeping_daily", job=housekeeping, cron_schedule="17 3 * * *", default_status=status
    )


class BackupConfig(dg.Config):
    folder: str = Field(description="Where backups go, one folder each, named by their time (HARMONIZER_BACKUP_DIR).")
    keep: int = Field(default=7, description="How many of the newest backups are kept.")


@dg.op(description="Backs up the warehouse, and a PostgreSQL instance's database, into a new folder.")
def back_up(context: dg.OpExecutionContext, config: BackupConfig, warehouse: WarehouseResource) -> None:
    root = Path(config.folder)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    folder = next(
        root / f"{stamp}{suffix}"
        for suffix in ("", *(f"-{n}" for n in range(2, 100)))
        if not (root / f"{stamp}{suffix}").exists()
    )
    manifest = backup(warehouse.open(), folder, instance_url())
    removed = prune(root, config.keep)
    context.log.info(
        f"backed up the {manifest.warehouse} warehouse{' and the instance' * manifest.instance} to {folder}; "
        f"removed {len(removed)} older backup(s), keeping {config.keep}"
    )
    context.add_output_metadata({"folder": str(folder), "backups_removed": len(removed)})


@dg.job(description="Backs up the warehouse (and a PostgreSQL instance): see docs/production.md, Operating it.")
def backup_warehouse() -> None:
    back_up()


def build_backup_schedule(folder: str, status: dg.DefaultScheduleStatus) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="backup_daily",
        job=backup_warehouse,
        cron_schedule="47 2 * * *",
        default_status=status,
        run_config={"ops": {"back_up": {"config": {"folder": folder}}}},
    )
