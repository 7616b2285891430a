"""Outcomes a load could not record itself, recorded from what the Dagster instance knows.

A run killed mid-load, or whose warehouse went away while it wrote its failure, leaves its
version `processing`. Once neither the run nor a re-execution of it is still going, the
version is marked failed with the run's own failure reason.
"""

import logging
from collections.abc import Sequence

import dagster as dg

from harmonizer_dagster.core.warehouse import Warehouse

# What Dagster puts around a step's own error: a step that ran out of retries, for one.
WRAPPERS = ("RetryRequestedFromPolicy", "RetryRequested")


def lost_run_outcome(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """What became of a run that left its version `processing`, once neither it nor a
    re-execution of it is still going; None while one is, and for a run another instance
    holds (a warehouse may be shared), whose fate this one cannot know."""
    group = instance.get_run_group(run_id) if run_id and instance.get_run_by_id(run_id) else None
    if group is None:
        return None
    records = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id for run in group[1]]))
    if any(not record.dagster_run.is_finished for record in records):
        return None
    latest = max(records, key=lambda record: record.create_timestamp).dagster_run
    failures = instance.get_records_for_run(
        latest.run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    ).records
    reason = next((r for r in (_failure_reason(f.event_log_entry) for f in failures) if r), "no failure reported")
    return f"run {latest.run_id} ended {latest.status.value} without recording the outcome: {reason}"


def _failure_reason(entry: dg.EventLogEntry) -> str:
    """The error a step raised (not Dagster's wrapper around it), else the run's failure message."""
    event = entry.dagster_event
    if event is not None and event.is_step_failure and event.step_failure_data.error:
        error = event.step_failure_data.error
        while error.cause is not None and (error.cls_name.startswith("Dagster") or error.cls_name in WRAPPERS):
            error = error.cause
        # A dg.Failure's description is the message; other errors keep their type's name.
        return error.message.split(": ", 1)[-1].strip() if error.cls_name == "Failure" else error.message.strip()
    return (entry.message or "").strip()


def record_lost_outcomes(
    instance: dg.DagsterInstance, store: Warehouse, sources: Sequence[str], log: logging.Logger
) -> list[str]:
    """Marks failed the versions of `sources` left `processing` by runs that ended; returns
    their partition keys."""
    recorded = []
    for source_id, partition_key, run_id in store.processing_versions(sources):
        outcome = lost_run_outcome(instance, run_id)
        if outcome:
            store.mark_failed(source_id, outcome)
            log.warning(f"{partition_key} (version {source_id}): {outcome}")
            recorded.append(partition_key)
    return recorded
