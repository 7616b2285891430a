"""One graph-backed, file-partitioned asset per declared source: hash -> validate -> harmonize -> upsert."""

import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg

from harmonizer_dagster.core.faults import is_transient
from harmonizer_dagster.core.files import FileVersion, RefusedFile, locate
from harmonizer_dagster.core.landing import missing_file_message
from harmonizer_dagster.core.monitoring import ProgressReporter
from harmonizer_dagster.core.pipeline import (
    HashedVersion,
    UpsertResult,
    harmonize_step,
    hash_step,
    upsert_step,
    validate_step,
)
from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.tables import sql_type
from harmonizer_dagster.orchestration.outcomes import record_lost_outcomes
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource, resource_keys, s3_client

# Dagster's run tag that says whether the daemon re-executes a run an op failed: the ops set
# it from what failed, so only passing faults are retried (the instances default it to false).
RETRY_ON_OP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"


def transient_retry_policy() -> dg.RetryPolicy:
    """Steps that read S3 or write the warehouse are tried again after a passing fault, with
    exponential backoff and jitter, so a restarting server or a dropped connection costs a
    few seconds, not the file."""
    return dg.RetryPolicy(
        max_retries=int(current("HARMONIZER_STEP_RETRIES")),
        delay=float(current("HARMONIZER_RETRY_DELAY_SECONDS")),
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def step_failure(exc: Exception) -> dg.Failure | None:
    """The Failure a step ends with for `exc`, or None for a passing fault, which is raised as it
    is so that the step's retry policy tries again (retrying a bad file changes nothing)."""
    if isinstance(exc, dg.Failure):
        exc.allow_retries = False
        return exc
    if isinstance(exc, RefusedFile):
        # A symbolic link, or a file changed since it was hashed: the reason alone is the run's
        # error, with no traceback to dig through.
        return dg.Failure(str(exc), allow_retries=False)
    if is_transient(exc):
        return None
    return dg.Failure("".join(traceback.format_exception_only(exc)).strip(), allow_retries=False)


def tag_retry(context: dg.OpExecutionContext, transient: bool) -> None:
    """Tells the daemon's run retries whether re-executing the run could help."""
    context.instance.add_run_tags(context.run_id, {RETRY_ON_OP_FAILURE_TAG: str(transient).lower()})


def announce_retry(context: dg.OpExecutionContext, exc: Exception) -> None:
    policy = context.op_def.retry_policy
    attempts = f" (attempt {context.retry_number + 1} of {policy.max_retries + 1})" if policy else ""
    context.log.warning(f"transient fault{attempts}: {type(exc).__name__}: {str(exc).strip()}")


@contextmanager
def faults_classified(context: dg.OpExecutionContext) -> Iterator[None]:
    """Lets a transient error reach the step's retry policy, and fails any other error at
    once. Either way the run is tagged, so the daemon's run retries re-execute it later only
    when a passing fault failed it."""
    try:
        yield
    except Exception as exc:
        failure = step_failure(exc)
        tag_retry(context, failure is None)
        if failure is None:
            announce_retry(context, exc)
            raise
        if failure is exc:
            raise
        raise failure from (None if isinstance(exc, RefusedFile) else exc)


def partitions_for(spec: SourceSpec) -> dg.DynamicPartitionsDefinition:
    """One partition per file in the source's landing folder, keyed by its relative path."""
    return dg.DynamicPartitionsDefinition(name=f"{spec.name}_files")


def column_schema(spec: SourceSpec) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=sql_type(c),
                description=f"from source field '{c.source}'",
                constraints=dg.TableColumnConstraints(nullable=not c.required, unique=c.name in spec.natural_key),
            )
            for c in spec.columns
        ]
    )


@dataclass(frozen=True)
class SourceOps:
    """The four ops of one source's asset; the files jobs run the same steps, file after file."""

    hash: dg.OpDefinition
    validate: dg.OpDefinition
    harmonize: dg.OpDefinition
    upsert: dg.OpDefinition


def _metadata(spec: SourceSpec, hashed: HashedVersion, result: UpsertResult) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "status": "skipped" if hashed.skipped else "loaded",
        "file_hash": hashed.file_hash,
        "source_version": hashed.version,
        "file_size_bytes": hashed.size_bytes,
        "duration_s": dg.MetadataValue.float(round(result.duration_s, 3)),
        "table_row_count": result.table_rows,
        "dagster/column_schema": column_schema(spec),
    }
    # A skipped version shows what its earlier load recorded, so its latest materialization
    # still tells the figures.
    metadata |= {
        "dagster/row_count": result.records_imported,
        "records_in_file": result.records_in_file,
        "inserted": result.records_inserted,
        "updated": result.records_updated,
        "unchanged": result.records_unchanged,
        "rejected": result.records_failed,
        "duplicates_skipped": result.records_skipped,
        "issues_recorded": result.issues,
    }
    if hashed.skipped:
        return {**metadata, "skipped_because": hashed.skipped_because}
    rate = result.records_in_file / max(result.duration_s, 1e-6)
    return {**metadata, "rows_per_second": dg.MetadataValue.float(round(rate, 1))}


def hash_file(
    context: dg.OpExecutionContext, spec: SourceSpec, target: FileVersion, store: Warehouse, landing: LandingZone
) -> HashedVersion:
    if not target.is_s3 and not os.path.lexists(target.path):
        raise dg.Failure(missing_file_message(landing.landing_path, spec.name, target.partition_key))
    client = s3_client(context, target.partition_key) if target.is_s3 else None
    # A retried attempt downloads and hashes the object again from its first byte.
    return hash_step(spec, target, store, landing.staging_path, context.run_id, s3_client=client)


def hash_summary(hashed: HashedVersion) -> str:
    return f"sha256 {hashed.file_hash[:12]}..., version {hashed.version}" + (
        f", skipped: {hashed.skipped_because}" if hashed.skipped else ""
    )


def validate_file(
    spec: SourceSpec, hashed: HashedVersion, store: Warehouse, landing: LandingZone, log: Callable[[str], None]
) -> dict[str, Any]:
    # Each checkpointed group moves the version's position in the registry; a line in the
    # run's log every few seconds says how far the step has got.
    progress = ProgressReporter(store, hashed.source_id, hashed.partition_key, log)
    with store.failure_recorded(hashed.source_id):
        return validate_step(spec, hashed, landing.batch_rows, progress)


def harmonize_file(spec: SourceSpec, hashed: HashedVersion, store: Warehouse) -> dict[str, Any]:
    with store.failure_recorded(hashed.source_id):
        return harmonize_step(spec, hashed)


def upsert_file(
    spec: SourceSpec, hashed: HashedVersion, store: Warehouse, run_id: str
) -> tuple[UpsertResult, dict[str, Any]]:
    """The upsert and the metadata of the partition's materialization."""
    with store.failure_recorded(hashed.source_id):
        result = upsert_step(spec, hashed, store, run_id)
    return result, _metadata(spec, hashed, result)


def upsert_summary(store: Warehouse, metadata: dict[str, Any]) -> str:
    figures = {k: v for k, v in metadata.items() if isinstance(v, int | str)}
    return f"into {store.description}: {figures}"


def build_source_ops(spec: SourceSpec, with_s3: bool = False) -> SourceOps:
    """`with_s3`: the code location configures S3, so the hash op takes its `s3` resource."""
    tags = {"source": spec.name}

    @dg.op(
        name=f"{spec.name}_hash",
        # Named here, not as arguments, because `s3` is there only where S3 is configured.
        required_resource_keys=resource_keys(with_s3, "warehouse", "landing"),
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Streams the file through SHA-256 and registers the version; an already-loaded hash is skipped.",
    )
    def hash_op(context: dg.OpExecutionContext) -> HashedVersion:
        warehouse: WarehouseResource = context.resources.warehouse
        landing: LandingZone = context.resources.landing
        target = locate(landing.landing_path, spec.name, context.partition_key)
        with faults_classified(context):
            store = warehouse.open()
            hashed = hash_file(context, spec, target, store, landing)
            # What earlier runs of the source could not record (the unrecorded_failures sensor
            # does the same where a daemon runs); this run's own version is still going.
            record_lost_outcomes(context.instance, store, [spec.name], context.log)
        context.log.info(f"{target.partition_key}: {hash_summary(hashed)}")
        return hashed

    @dg.op(
        name=f"{spec.name}_validate",
        tags=tags,
        description="Checks every record against the spec's rules and harmonizes the ones that pass.",
    )
    def validate_op(
        context: dg.OpExecutionContext, warehouse: WarehouseResource, landing: LandingZone, hashed: HashedVersion
    ) -> HashedVersion:
        with faults_classified(context):
            summary = validate_file(spec, hashed, warehouse.open(), landing, context.log.info)
        if summary:
            context.log.info(f"{hashed.partition_key}: {summary}")
        return hashed

    @dg.op(
        name=f"{spec.name}_harmonize",
        tags=tags,
        description="Resolves duplicate natural keys in the file: the last occurrence wins.",
    )
    def harmonize_op(
        context: dg.OpExecutionContext, warehouse: WarehouseResource, hashed: HashedVersion
    ) -> HashedVersion:
        with faults_classified(context):
            summary = harmonize_file(spec, hashed, warehouse.open())
        if summary:
            context.log.info(f"{hashed.partition_key}: {summary}")
        return hashed

    @dg.op(
        name=f"{spec.name}_upsert",
        out=dg.Out(io_manager_key="source_tables"),
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Upserts on the natural key with issues and failed records, in one transaction.",
    )
    def upsert_op(context: dg.OpExecutionContext, warehouse: WarehouseResource, hashed: HashedVersion):
        store = warehouse.open()
        with faults_classified(context):
            result, metadata = upsert_file(spec, hashed, store, context.run_id)
        context.log.info(f"{hashed.partition_key} {upsert_summary(store, metadata)}")
        return dg.Output(result, metadata=metadata, data_version=dg.DataVersion(hashed.file_hash))

    return SourceOps(hash_op, validate_op, harmonize_op, upsert_op)


def build_source_asset(spec: SourceSpec, ops: SourceOps, host_tags: dict[str, str]) -> dg.AssetsDefinition:
    @dg.graph_asset(
        name=spec.name,
        partitions_def=partitions_for(spec),
        description=f"{spec.title}. {spec.description}".strip(),
        owners=[spec.owner],
        kinds={spec.format, "pandera"},
        metadata={
            "dagster/column_schema": column_schema(spec),
            "natural_key": ", ".join(spec.natural_key),
            "spec_file": str(spec.path.name) if spec.path else "",
        },
        # Runs of the asset's page and of asset backfills inherit these (see run_coordinator.py).
        tags={"source": spec.name, **host_tags},
    )
    def source_asset():
        return ops.upsert(ops.harmonize(ops.validate(ops.hash())))

    if not spec.freshness_hours:
        return source_asset
    # A source whose next version is overdue is flagged (the legacy "no file this quarter" check):
    # Dagster's freshness daemon marks the asset failing its policy once no version has loaded
    # within the window.
    policy = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=spec.freshness_hours))
    return source_asset.map_asset_specs(lambda asset_spec: dg.apply_freshness_policy(asset_spec, policy))


def build_published_asset(spec: SourceSpec, host_tags: dict[str, str]) -> dg.AssetsDefinition:
    """The file versions consumers may rely on: a partition is published only once the
    source's blocking checks passed in the same run, which the UI shows as a skipped step."""

    @dg.asset(
        name=f"{spec.name}_published",
        deps=[spec.name],
        partitions_def=partitions_for(spec),
        description=f"File versions of {spec.title} that passed every blocking data-quality check.",
        owners=[spec.owner],
        kinds={"sql"},
        # Runs of the asset's page and of asset backfills inherit these (see run_coordinator.py).
        tags={"source": spec.name, **host_tags},
    )
    def published(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        published_version = warehouse.open().mark_published(spec.name, context.partition_key)
        if not published_version:
            raise dg.Failure(f"{context.partition_key} has no completed load to publish")
        source_id, file_hash = published_version
        return dg.MaterializeResult(metadata={"source_id": source_id, "file_hash": file_hash})

    return published
