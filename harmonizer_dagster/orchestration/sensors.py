"""Sensors: new or changed files start runs by themselves, from a local folder or S3.

One landing sensor per source and per kind of landing area: each can be switched on and off
in the UI on its own, keeps its own cursor, and lives in the code location that owns the
source, so a Pi only watches the sources it loads.
"""

import time
from collections.abc import Callable, Sequence

import dagster as dg

from harmonizer_dagster.core.faults import is_transient
from harmonizer_dagster.core.files import FileFingerprint, RefusedFile, fingerprint, fingerprint_s3, locate
from harmonizer_dagster.core.landing import (
    Ignored,
    Landed,
    ScanState,
    group_runs,
    run_key,
    s3_prefix,
    scan_folder,
    scan_s3,
)
from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.orchestration.outcomes import record_lost_outcomes
from harmonizer_dagster.orchestration.partitions import partitions_for
from harmonizer_dagster.orchestration.resources import LandingZone, S3Landing, WarehouseResource
from harmonizer_dagster.orchestration.run_config import files_run_config

# Hashing big files takes a while; a sensor tick must end well within Dagster's 60 s limit.
HASH_BUDGET_SECONDS = 30.0


def landing_tick(
    context: dg.SensorEvaluationContext,
    spec: SourceSpec,
    listing: Callable[[list[Ignored], int], list[Landed]],
    content_hash: Callable[[Landed], FileFingerprint],
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation: register ready files as partitions and request runs that load them,
    each run a group of files (HARMONIZER_RUN_MAX_FILES, HARMONIZER_RUN_MAX_BYTES).

    The run key is made of the files' content hashes, so the same bytes never start a second
    run whatever the files are called, while a corrected re-upload under the same name does."""
    state = ScanState.parse(context.cursor)
    ignored: list[Ignored] = []
    try:
        items = listing(ignored, state.mark)
    except Exception as exc:  # an unreachable folder or bucket must not lose the cursor
        context.log.warning(f"{spec.name}: landing area unreadable, tick skipped: {exc}")
        return dg.SkipReason(f"landing area unreadable: {type(exc).__name__}")
    scan = state.advance(items, ignored)
    for item in scan.reported:
        context.log.warning(f"{spec.name}: {item.key} ignored: {item.reason}")
    hashed: list[tuple[Landed, FileFingerprint]] = []
    left: list[Landed] = []
    started = time.monotonic()
    for position, item in enumerate(scan.ready):
        if time.monotonic() - started > HASH_BUDGET_SECONDS:
            # Keep the tick inside Dagster's sensor timeout: the rest stay ready for the next tick.
            left = scan.ready[position:]
            context.log.info(f"{spec.name}: {len(left)} ready file(s) left for the next tick")
            break
        try:
            hashed.append((item, content_hash(item)))
        except FileNotFoundError:
            context.log.info(f"{spec.name}: {item.key} disappeared before it could be hashed")
        except RefusedFile as exc:  # became a link since it was listed: the next scan reports it
            context.log.warning(f"{spec.name}: {item.key} not hashed: {exc}")
    partitions = partitions_for(spec)
    known = set(context.instance.get_dynamic_partitions(partitions.name or spec.name)) if hashed else set()
    # Loaded already, say by `ingest_landing` before the daemon first ran: no second run.
    loaded = {
        item.key for item, fp in hashed if item.key in known and _materialized_with(context.instance, spec, item, fp)
    }
    if loaded:
        context.log.info(f"{spec.name}: already loaded with the same content, no run: {', '.join(sorted(loaded))}")
    bounds = int(current("HARMONIZER_RUN_MAX_FILES")), int(current("HARMONIZER_RUN_MAX_BYTES"))
    batches = group_runs([pair for pair in hashed if pair[0].key not in loaded], lambda p: p[1].size_bytes, *bounds)
    new_keys = [item.key for item, _ in hashed if item.key not in known]
    return dg.SensorResult(
        run_requests=[_run_request(spec, batch) for batch in batches],
        dynamic_partitions_requests=[partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=scan.finish(left).dump(),
    )


def _run_request(spec: SourceSpec, batch: list[tuple[Landed, FileFingerprint]]) -> dg.RunRequest:
    """One run of the source's files job over a group of files, each loaded as its own partition."""
    keys = [item.key for item, _ in batch]
    return dg.RunRequest(
        run_key=f"{spec.name}:{run_key(fp.file_hash for _, fp in batch)}",
        run_config=files_run_config(spec, keys),
        tags={"harmonizer/files": str(len(keys))},
    )


def _materialized_with(instance: dg.DagsterInstance, spec: SourceSpec, item: Landed, fp: FileFingerprint) -> bool:
    """Whether the partition's latest materialization is of exactly these bytes."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(spec.name), asset_partitions=[item.key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return False
    recorded = records[0].asset_materialization.metadata.get("file_hash")
    return recorded is not None and recorded.value == fp.file_hash


def build_folder_sensor(spec: SourceSpec, job, interval: int, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_landing_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=status,
        description=f"Starts runs that load the new or changed files in the {spec.name} landing folder.",
    )
    def folder_sensor(context: dg.SensorEvaluationContext, landing: LandingZone):
        def content_hash(item: Landed) -> FileFingerprint:
            with locate(landing.landing_path, spec.name, item.key).open() as handle:
                return fingerprint(handle)

        return landing_tick(
            context,
            spec,
            lambda ignored, since: scan_folder(landing.landing_path, spec.name, ignored, since),
            content_hash,
        )

    return folder_sensor


def build_s3_sensor(spec: SourceSpec, job, interval: int, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    """Built only where HARMONIZER_S3_BUCKET is set: dagster-aws is imported here, not with the module."""
    from harmonizer_dagster.orchestration.aws import S3Resource

    @dg.sensor(
        name=f"{spec.name}_s3_sensor",
        job=job,
        minimum_interval_seconds=interval,
        default_status=status,
        description=f"Starts runs that load the new or changed objects under the {spec.name} S3 prefix.",
    )
    def bucket_sensor(context: dg.SensorEvaluationContext, s3: S3Resource, s3_landing: S3Landing):
        client = s3.get_client()
        return landing_tick(
            context,
            spec,
            lambda _ignored, _since: scan_s3(client, s3_landing.bucket, s3_prefix(s3_landing.prefix, spec.name)),
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
