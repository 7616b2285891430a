"""Schedules replace cron: a pull-based source's schedule fetches its upstream file into the
landing zone, where the landing sensor picks it up like any other drop."""

from datetime import UTC, datetime

import dagster as dg

from harmonizer_dagster.core.fetching import fetch_upstream, upstream_location
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.orchestration.resources import LandingZone, resource_keys, s3_client

SCHEDULED_TIME_TAG = "dagster/scheduled_execution_time"


def build_fetch_job(spec: SourceSpec, host_tags: dict[str, str], with_s3: bool = False) -> dg.JobDefinition:
    """`with_s3`: the code location configures S3, so the fetch op takes its `s3` resource."""
    assert spec.schedule is not None
    fetch = spec.schedule.fetch

    @dg.op(
        name=f"{spec.name}_fetch",
        # Named here, not as arguments, because `s3` is there only where S3 is configured.
        required_resource_keys=resource_keys(with_s3, "landing"),
        tags={"source": spec.name},
    )
    def fetch_op(context: dg.OpExecutionContext) -> str:
        landing: LandingZone = context.resources.landing
        # A scheduled run names the file after its scheduled time; a manual run after now.
        scheduled = context.run.tags.get(SCHEDULED_TIME_TAG)
        moment = datetime.fromisoformat(scheduled) if scheduled else datetime.now(UTC)
        location = upstream_location(fetch)
        client = s3_client(context, location) if location and location.startswith("s3://") else None
        target = fetch_upstream(fetch, landing.landing_path, spec.name, moment, client)
        context.log.info(f"fetched {spec.name} upstream into {target}")
        return str(target)

    @dg.job(
        name=f"fetch_{spec.name}",
        tags={"source": spec.name, **host_tags},
        description=f"Fetches the upstream file of {spec.title} into its landing folder.",
    )
    def fetch_job():
        fetch_op()

    return fetch_job


def build_fetch_schedule(
    spec: SourceSpec, job: dg.JobDefinition, status: dg.DefaultScheduleStatus
) -> dg.ScheduleDefinition:
    assert spec.schedule is not None
    schedule = spec.schedule

    @dg.schedule(
        name=f"{spec.name}_schedule",
        job=job,
        cron_schedule=schedule.cron,
        execution_timezone=schedule.timezone,
        default_status=status,
        description=f"Fetches {spec.title} on '{schedule.cron}' ({schedule.timezone}).",
    )
    def fetch_schedule(context: dg.ScheduleEvaluationContext):
        if upstream_location(schedule.fetch) is None:
            return dg.SkipReason(f"upstream not configured: set {schedule.fetch.url_env}")
        return dg.RunRequest()

    return fetch_schedule
