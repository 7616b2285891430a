"""Sensors: new or changed files start runs by themselves, from a local folder or S3.

One landing sensor per source and per kind of landing area: each can be switched on and off
in the UI on its own, keeps its own cursor, and lives in the code location that owns the
source, so a Pi only watches the sources it loads.
"""

import time
from collections.abc import Callable, Sequence

import dagster as dg
from dagster_aws.s3 import S3Resource

from harmonizer_dagster.core.faults import is_transient
from harmonizer_dagster.core.files import FileFingerprint, RefusedFile, fingerprint, fingerprint_s3, locate
from harmonizer_dagster.core.landing import Ignored, Landed, ScanState, s3_prefix, scan_folder, scan_s3
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.orchestration.assets import partitions_for
from harmonizer_dagster.orchestration.outcomes import record_lost_outcomes
from harmonizer_dagster.orchestration.resources import LandingZone, S3Landing, WarehouseResource

# Hashing big files takes a while; a sensor tick must end well within Dagster's 60 s limit.
HASH_BUDGET_SECONDS = 30.0


def landing_tick(
    context: dg.SensorEvaluationContext,
    spec: SourceSpec,
    listing: Callable[[list[Ignored]], list[Landed]],
    content_hash: Callable[[Landed], FileFingerprint],
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation: register ready files as partitions and request a run for each.

    The run key is the content hash, so the same bytes never start a second run whatever
    the file is called, while a corrected re-upload under the same name does."""
    state = ScanState.parse(context.cursor)
    ignored: list[Ignored] = []
    try:
        items = listing(ignored)
    except Exception as exc:  # an unreachable folder or bucket must not lose the cursor
        context.log.warning(f"{spec.name}: landing area unreadable, tick skipped: {exc}")
        return dg.SkipReason(f"landing area unreadable: {type(exc).__name__}")
    ready, next_state = state.advance(items)
    for item in ignored:
        if item.key not in state.ignored:
            context.log.warning(f"{spec.name}: {item.key} ignored: {item.reason}")
    next_state.ignored = sorted(item.key for item in ignored)
    requests: list[dg.RunRequest] = []
    already_loaded: list[str] = []
    started = time.monotonic()
    for position, item in enumerate(ready):
        if time.monotonic() - started > HASH_BUDGET_SECONDS:
            # Keep the tick inside Dagster's sensor timeout: the rest stay ready for the next tick.
            for later in ready[position:]:
                next_state.waiting[later.key] = later.signature
            context.log.info(f"{spec.name}: {len(ready) - position} ready file(s) left for the next tick")
            break
        try:
            fp = content_hash(item)
        except FileNotFoundError:
            context.log.info(f"{spec.name}: {item.key} disappeared before it could be hashed")
            continue
        except RefusedFile as exc:  # became a link since it was listed: the next scan reports it
            context.log.warning(f"{spec.name}: {item.key} not hashed: {exc}")
            continue
        next_state.handled[item.key] = item.signature
        if _materialized_with(context.instance, spec, item.key, fp.file_hash):
            # Loaded already, say by `ingest_landing` before the daemon first ran: no second run.
            already_loaded.append(item.key)
            continue
        requests.append(
            dg.RunRequest(
                partition_key=item.key,
                run_key=f"{spec.name}:{fp.file_hash}",
                tags={"harmonizer/file_hash": fp.file_hash},
            )
        )
    if already_loaded:
        context.log.info(f"{spec.name}: already loaded with the same content, no run: {', '.join(already_loaded)}")
    keys = [*already_loaded, *(str(r.partition_key) for r in requests)]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[partitions_for(spec).build_add_request(keys)] if keys else [],
        cursor=next_state.dump(),
    )


def _materialized_with(instance: dg.DagsterInstance, spec: SourceSpec, partition_key: str, file_hash: str) -> bool:
    """Whether the partition's latest materialization is of exactly these bytes."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(spec.name), asset_partitions=[partition_key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return False
    recorded = records[0].asset_materialization.metadata.get("file_hash")
    return recorded is not None and recorded.value == file_hash


def build_folder_sensor(spec: SourceSpec, job, interval: int, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_landing_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=status,
        description=f"Starts a run for each new or changed file in the {spec.name} landing folder.",
    )
    def folder_sensor(context: dg.SensorEvaluationContext, landing: LandingZone):
        def content_hash(item: Landed) -> FileFingerprint:
            with locate(landing.landing_path, spec.name, item.key).open() as handle:
                return fingerprint(handle)

        return landing_tick(
            context, spec, lambda ignored: scan_folder(landing.landing_path, spec.name, ignored), content_hash
        )

    return folder_sensor


def build_s3_sensor(spec: SourceSpec, job, interval: int, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_s3_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=status,
        description=f"Starts a run for each new or changed object under the {spec.name} S3 prefix.",
    )
    def bucket_sensor(context: dg.SensorEvaluationContext, s3: S3Resource, s3_landing: S3Landing):
        client = s3.get_client()
        return landing_tick(
            context,
            spec,
            lambda _: scan_s3(client, s3_landing.bucket, s3_prefix(s3_landing.prefix, spec.name)),
            lambda item: fingerprint_s3(client, item.key),
        )

    return bucket_sensor


def build_unrecorded_failures_sensor(specs: Sequence[SourceSpec]) -> dg.SensorDefinition:
    """Records the outcome of loads that could not record it themselves: a version left
    `processing` by a run that is no longer running (its worker killed, or the warehouse gone
    while the failure was being written) is marked failed with that run's failure reason."""
    names = [spec.name for spec in specs]

    @dg.sensor(
        name="unrecorded_failures",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks failed, with the run's failure reason, versions left 'processing' by runs that ended.",
    )
    def unrecorded_failures(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
        try:
            recorded = record_lost_outcomes(context.instance, warehouse.open(), names, context.log)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # A load holds the DuckDB file, or the server is away: the next tick looks again.
            return dg.SkipReason(f"warehouse unavailable, looking again next tick: {type(exc).__name__}")
        if not recorded:
            return dg.SkipReason("no version left processing by a finished run")
        return dg.SkipReason(f"recorded the outcome of {len(recorded)} version(s): {', '.join(recorded)}")

    return unrecorded_failures
