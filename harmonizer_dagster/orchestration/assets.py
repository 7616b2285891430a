"""One graph-backed, file-partitioned asset per declared source: hash -> validate -> harmonize -> upsert."""

import os
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
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
from harmonizer_dagster.orchestration.checks import evaluate_all_checks
from harmonizer_dagster.orchestration.outcomes import record_lost_outcomes
from harmonizer_dagster.orchestration.partitions import backfill_policy, partitions_for
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


@dataclass(frozen=True)
class FileBatch:
    """What the asset's ops hand on: the file versions still going and those that failed on the
    way, with why. A run of one partition carries one file; a backfill's run, a range of them."""

    hashed: tuple[HashedVersion, ...]
    failed: tuple[tuple[str, str], ...] = ()  # (partition key, why)
    total: int = 1


def failed_files(reasons: Mapping[str, str], total: int) -> dg.Failure:
    """The step's failure once every file had its turn: which files failed, and why."""
    return dg.Failure(
        f"{len(reasons)} of {total} file(s) failed: " + "; ".join(f"{key}: {why}" for key, why in reasons.items()),
        metadata={"failed_files": dg.MetadataValue.json(dict(reasons))},
        allow_retries=False,
    )


def each_file(
    context: dg.OpExecutionContext,
    batch: FileBatch,
    steps: Sequence[tuple[str, Callable[[], HashedVersion]]],
    last: bool = False,
) -> FileBatch:
    """Runs each file's step (its partition key, and the step, which returns the version that
    goes on). In a run of one partition, the file's error is the step's (see faults_classified).
    In a backfill's range a passing fault still fails the step, for its retry policy, but a bad
    file fails only itself: it is logged and left behind, and named when no file is left to go
    on, or by the last step once the others are loaded."""
    ranged = context.has_partition_key_range
    going: list[HashedVersion] = []
    failed = dict(batch.failed)
    for key, step in steps:
        try:
            with faults_classified(context):
                going.append(step())
        except dg.Failure as failure:
            if not ranged:
                raise
            failed[key] = failure.description or ""
            context.log.error(f"{key} failed: {failure.description}")
    if failed and (last or not going):
        raise failed_files(failed, batch.total)
    return FileBatch(tuple(going), tuple(failed.items()), batch.total)


def upsert_and_report(
    context: dg.OpExecutionContext, spec: SourceSpec, hashed: HashedVersion, store: Warehouse
) -> None:
    """Upserts a file of a run of several and reports it as its partition's materialization."""
    key = hashed.partition_key
    _, metadata = upsert_file(spec, hashed, store, context.run_id)
    # One line per file: what the asset's four steps would log, in short.
    context.log.info(f"{key}: {hash_summary(hashed)}; {upsert_summary(store, metadata)}")
    context.log_event(dg.AssetMaterialization(asset_key=spec.name, partition=key, metadata=metadata))


def check_and_publish(context: dg.OpExecutionContext, spec: SourceSpec, store: Warehouse, key: str) -> None:
    """A loaded file's asset checks, then its publication unless a blocking check failed."""
    failures = evaluate_all_checks(context, store, spec, key)
    if failures:
        context.log.warning(f"{key} is not published: blocking check(s) failed: {failures}")
        return
    published = store.mark_published(spec.name, key)
    if not published:
        raise dg.Failure(f"{key} has no completed load to publish")
    context.log_event(
        dg.AssetMaterialization(
            asset_key=f"{spec.name}_published",
            partition=key,
            metadata={"source_id": published[0], "file_hash": published[1]},
        )
    )


def build_source_ops(spec: SourceSpec, with_s3: bool = False) -> SourceOps:
    """`with_s3`: the code location configures S3, so the hash op takes its `s3` resource.

    A run of one partition hands its file from op to op, and the upsert's output is the
    partition's materialization, followed by the check and publication steps. A backfill's run
    of a range takes every file of it through each op, and its upsert reports each file as the
    files jobs do: its own materialization, checks and publication (the steps after it are
    then skipped)."""
    tags = {"source": spec.name}

    @dg.op(
        name=f"{spec.name}_hash",
        # Named here, not as arguments, because `s3` is there only where S3 is configured.
        required_resource_keys=resource_keys(with_s3, "warehouse", "landing"),
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Streams the file through SHA-256 and registers the version; an already-loaded hash is skipped.",
    )
    def hash_op(context: dg.OpExecutionContext) -> FileBatch:
        warehouse: WarehouseResource = context.resources.warehouse
        landing: LandingZone = context.resources.landing
        keys = context.partition_keys
        with faults_classified(context):
            store = warehouse.open()
            # What earlier runs of the source could not record (the unrecorded_failures sensor
            # does the same where a daemon runs); this run's own versions are still going.
            record_lost_outcomes(context.instance, store, [spec.name], context.log)

        def hashed(key: str) -> HashedVersion:
            version = hash_file(context, spec, locate(landing.landing_path, spec.name, key), store, landing)
            context.log.info(f"{key}: {hash_summary(version)}")
            return version

        with store.kept_open():
            return each_file(context, FileBatch((), total=len(keys)), [(key, partial(hashed, key)) for key in keys])

    @dg.op(
        name=f"{spec.name}_validate",
        tags=tags,
        description="Checks every record against the spec's rules and harmonizes the ones that pass.",
    )
    def validate_op(
        context: dg.OpExecutionContext, warehouse: WarehouseResource, landing: LandingZone, batch: FileBatch
    ) -> FileBatch:
        store = warehouse.open()

        def validated(hashed: HashedVersion) -> HashedVersion:
            summary = validate_file(spec, hashed, store, landing, context.log.info)
            if summary:
                context.log.info(f"{hashed.partition_key}: {summary}")
            return hashed

        with store.kept_open():
            return each_file(context, batch, [(h.partition_key, partial(validated, h)) for h in batch.hashed])

    @dg.op(
        name=f"{spec.name}_harmonize",
        tags=tags,
        description="Resolves duplicate natural keys in the file: the last occurrence wins.",
    )
    def harmonize_op(context: dg.OpExecutionContext, warehouse: WarehouseResource, batch: FileBatch) -> FileBatch:
        store = warehouse.open()

        def harmonized(hashed: HashedVersion) -> HashedVersion:
            summary = harmonize_file(spec, hashed, store)
            if summary:
                context.log.info(f"{hashed.partition_key}: {summary}")
            return hashed

        with store.kept_open():
            return each_file(context, batch, [(h.partition_key, partial(harmonized, h)) for h in batch.hashed])

    @dg.op(
        name=f"{spec.name}_upsert",
        # A backfill's run of a range reports each file itself, and yields no output.
        out=dg.Out(io_manager_key="source_tables", is_required=False),
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Upserts on the natural key with issues and failed records, in one transaction.",
    )
    def upsert_op(context: dg.OpExecutionContext, warehouse: WarehouseResource, batch: FileBatch):
        store = warehouse.open()
        if context.has_partition_key_range:

            def loaded(hashed: HashedVersion) -> HashedVersion:
                upsert_and_report(context, spec, hashed, store)
                check_and_publish(context, spec, store, hashed.partition_key)
                return hashed

            with store.kept_open():
                each_file(context, batch, [(h.partition_key, partial(loaded, h)) for h in batch.hashed], last=True)
            return
        (hashed,) = batch.hashed
        with faults_classified(context):
            result, metadata = upsert_file(spec, hashed, store, context.run_id)
        context.log.info(f"{hashed.partition_key} {upsert_summary(store, metadata)}")
        yield dg.Output(result, metadata=metadata, data_version=dg.DataVersion(hashed.file_hash))

    return SourceOps(hash_op, validate_op, harmonize_op, upsert_op)


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

    # `backfill_policy` is a beta parameter of `@asset` in Dagster 1.13; it is what lets a
    # backfill load many files per run, so the warning is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.asset(
            name=f"{spec.name}_published",
            deps=[spec.name],
            partitions_def=partitions_for(spec),
            # The source's own: a backfill of both runs them together (the range's files are
            # published by the source's upsert, and this step is then skipped).
            backfill_policy=backfill_policy(),
            output_required=False,
            description=f"File versions of {spec.title} that passed every blocking data-quality check.",
            owners=[spec.owner],
            kinds={"sql"},
            # Runs of the asset's page and of asset backfills inherit these (see run_coordinator.py).
            tags={"source": spec.name, **host_tags},
        )
        def published(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
            store = warehouse.open()
            unpublished = {}
            for key in context.partition_keys:
                published_version = store.mark_published(spec.name, key)
                if not published_version:
                    unpublished[key] = "no completed load to publish"
                    continue
                metadata = {"source_id": published_version[0], "file_hash": published_version[1]}
                if not context.has_partition_key_range:
                    yield dg.MaterializeResult(metadata=metadata)
                else:
                    # A range's files each get their own materialization.
                    context.log_event(
                        dg.AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=metadata)
                    )
            if unpublished:
                raise failed_files(unpublished, len(context.partition_keys))

    return published
