"""Write-audit-publish per declared source: a graph-backed, file-partitioned asset writes each
version to the warehouse's stage (hash -> validate -> deduplicate -> stage), its asset checks
audit it, and `<source>_published` publishes the versions that passed into the table
consumers read."""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from harmonizer_dagster.core.files import locate
from harmonizer_dagster.core.pipeline import HashedVersion
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.orchestration.outcomes import record_lost_outcomes
from harmonizer_dagster.orchestration.partitions import backfill_policy, partitions_for
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource, resource_keys
from harmonizer_dagster.orchestration.steps import (
    Publication,
    column_schema,
    deduplicate_file,
    faults_classified,
    hash_file,
    hash_summary,
    load_files_in_turn,
    published_materialization,
    raise_for_failed_files,
    stage_file,
    stage_summary,
    transient_retry_policy,
    validate_file,
)


@dataclass(frozen=True)
class SourceOps:
    """The four ops of one source's asset; the files jobs run the same steps, file after file."""

    hash: dg.OpDefinition
    validate: dg.OpDefinition
    deduplicate: dg.OpDefinition
    stage: dg.OpDefinition


def backfill_range(context: dg.OpExecutionContext) -> Sequence[str] | None:
    """The files of a backfill's run of a range, or None for a run of one file.

    The assets' backfill policy hands a backfill's run a range of partitions. Its files go
    through the four steps in turn, one file after the other, within the stage op (as the
    files jobs load them): staging holds one file at a time, and a file with the bytes of one
    before it is skipped as loaded. Each file is reported as its own partition, with its
    materialization, checks and publication; a file that fails is named once the others are
    loaded. The ops before the stage op hand nothing on, and the asset's output, its check step
    and its publication step are left out."""
    keys = context.partition_keys
    return keys if len(keys) > 1 else None


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
    def hash_op(context: dg.OpExecutionContext) -> HashedVersion | None:
        if keys := backfill_range(context):
            context.log.info(f"a backfill's range of {len(keys)} files: each is loaded in turn by the stage step")
            return None
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
        description="Checks every record against the spec's rules and harmonizes the values of the ones that pass.",
    )
    def validate_op(
        context: dg.OpExecutionContext, warehouse: WarehouseResource, landing: LandingZone, hashed: HashedVersion | None
    ) -> HashedVersion | None:
        if hashed is None:  # a backfill's range (see backfill_range)
            return None
        with faults_classified(context):
            summary = validate_file(spec, hashed, warehouse.open(), landing, context.log.info)
        if summary:
            context.log.info(f"{hashed.partition_key}: {summary}")
        return hashed

    @dg.op(
        name=f"{spec.name}_deduplicate",
        tags=tags,
        description="Resolves duplicate natural keys in the file: the last occurrence wins.",
    )
    def deduplicate_op(
        context: dg.OpExecutionContext, warehouse: WarehouseResource, hashed: HashedVersion | None
    ) -> HashedVersion | None:
        if hashed is None:  # a backfill's range (see backfill_range)
            return None
        with faults_classified(context):
            summary = deduplicate_file(spec, hashed, warehouse.open())
        if summary:
            context.log.info(f"{hashed.partition_key}: {summary}")
        return hashed

    @dg.op(
        name=f"{spec.name}_stage",
        # A backfill's range reports each file itself and yields no output (see backfill_range).
        out=dg.Out(io_manager_key="source_tables", is_required=False),
        # Named here, not as arguments: a backfill's range hashes its files here, from S3 too.
        required_resource_keys=resource_keys(with_s3, "warehouse", "landing"),
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Writes the version's rows to the warehouse's stage with its issues and failed records, "
        "in one transaction; in a backfill's range, loads each file of it in turn.",
    )
    def stage_op(context: dg.OpExecutionContext, hashed: HashedVersion | None):
        warehouse: WarehouseResource = context.resources.warehouse
        store = warehouse.open()
        if keys := backfill_range(context):
            load_backfill_range(context, spec, keys, store)
            return
        with faults_classified(context):
            result, metadata = stage_file(spec, hashed, store, context.run_id)
        context.log.info(f"{hashed.partition_key} {stage_summary(store, metadata)}")
        yield dg.Output(result, metadata=metadata, data_version=dg.DataVersion(hashed.file_hash))

    return SourceOps(hash_op, validate_op, deduplicate_op, stage_op)


def load_backfill_range(
    context: dg.OpExecutionContext, spec: SourceSpec, keys: Sequence[str], store: Warehouse
) -> None:
    """Loads a backfill's range file after file, as the files jobs do (see backfill_range)."""
    # The DuckDB file stays open from file to file, and waiting processes are let in.
    with store.kept_open():
        # As a materialization of each partition would: a failed blocking check fails the file,
        # and files are published only where the backfill selected the published asset too.
        publish = dg.AssetKey(f"{spec.name}_published") in context.job_def.asset_layer.selected_asset_keys
        publication = Publication(publish=publish, blocking_fails=True)
        failed = load_files_in_turn(context, spec, keys, store, context.resources.landing, publication)
    raise_for_failed_files(context, failed, len(keys))


def build_source_asset(spec: SourceSpec, ops: SourceOps, host_tags: dict[str, str]) -> dg.AssetsDefinition:
    @dg.graph_asset(
        name=spec.name,
        partitions_def=partitions_for(spec),
        backfill_policy=backfill_policy(),
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
        return ops.stage(ops.deduplicate(ops.validate(ops.hash())))

    if not spec.freshness_hours:
        return source_asset
    # A source whose next version is overdue is flagged (the legacy "no file this quarter" check):
    # Dagster's freshness daemon marks the asset failing its policy once no version has loaded
    # within the window.
    policy = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=spec.freshness_hours))
    return source_asset.map_asset_specs(lambda asset_spec: dg.apply_freshness_policy(asset_spec, policy))


def build_published_asset(spec: SourceSpec, host_tags: dict[str, str]) -> dg.AssetsDefinition:
    """The table consumers read: a partition's staged version is published into it only once the
    source's blocking checks passed (a failing one skips this step in the same run, and holds
    the version for a steward); in a backfill's range, the source's stage step publishes each
    file, and this step is skipped."""

    # `backfill_policy` is a beta parameter of `@asset` in Dagster 1.13; it is what lets a
    # backfill load many files per run, so the warning is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.asset(
            name=f"{spec.name}_published",
            deps=[spec.name],
            partitions_def=partitions_for(spec),
            # The source's own: a backfill of both hands them the same ranges.
            backfill_policy=backfill_policy(),
            output_required=False,
            description=f"{spec.title} as consumers read it: the file versions that passed every blocking "
            "data-quality check, or that a data steward released.",
            owners=[spec.owner],
            kinds={"sql"},
            # Runs of the asset's page and of asset backfills inherit these (see run_coordinator.py).
            tags={"source": spec.name, **host_tags},
        )
        def published(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
            store = warehouse.open()
            op_context = context.op_execution_context
            if not (keys := backfill_range(op_context)):
                yield dg.MaterializeResult(
                    metadata=published_materialization(op_context, spec, store, context.partition_key).metadata
                )
                return
            # A range of this asset alone (republishing): each file its own materialization.
            failed = {}
            for key in keys:
                try:
                    context.log_event(published_materialization(op_context, spec, store, key))
                except Exception as exc:
                    failed[key] = exc
            raise_for_failed_files(op_context, failed, len(keys))

    return published
