"""What a file's steps do as ops run them: each step of one file, how its faults end the step
(a passing fault is retried, any other fails the file), and a run's files carried from op to
op as a `Batch`, each file reported as its own partition."""

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import dagster as dg

from harmonizer_dagster.core.faults import is_transient
from harmonizer_dagster.core.files import FileVersion, RefusedFile
from harmonizer_dagster.core.landing import missing_file_message
from harmonizer_dagster.core.monitoring import ProgressReporter
from harmonizer_dagster.core.pipeline import (
    HashedVersion,
    StagedVersion,
    deduplicate_step,
    hash_step,
    stage_step,
    validate_step,
)
from harmonizer_dagster.core.publishing import Publication
from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.tables import sql_type
from harmonizer_dagster.orchestration.resources import LandingZone, s3_client

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


def _metadata(spec: SourceSpec, hashed: HashedVersion, result: StagedVersion) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "status": "skipped" if hashed.skipped else "staged",
        "file_hash": hashed.file_hash,
        "source_version": hashed.version,
        "file_size_bytes": hashed.size_bytes,
        "duration_s": dg.MetadataValue.float(round(result.duration_s, 3)),
        "table_row_count": result.table_rows,
        "dagster/column_schema": column_schema(spec),
    }
    # A skipped version shows what its earlier load recorded, so its latest materialization
    # still tells the figures; a staged one what publishing it would do.
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


def deduplicate_file(spec: SourceSpec, hashed: HashedVersion, store: Warehouse) -> dict[str, Any]:
    with store.failure_recorded(hashed.source_id):
        return deduplicate_step(spec, hashed)


def stage_file(
    spec: SourceSpec, hashed: HashedVersion, store: Warehouse, run_id: str
) -> tuple[StagedVersion, dict[str, Any]]:
    """The version written to the warehouse's stage, and the metadata of its materialization."""
    with store.failure_recorded(hashed.source_id):
        result = stage_step(spec, hashed, store, run_id)
    return result, _metadata(spec, hashed, result)


def stage_summary(store: Warehouse, metadata: dict[str, Any]) -> str:
    figures = {k: v for k, v in metadata.items() if isinstance(v, int | str)}
    return f"staged in {store.description}: {figures}"


@dataclass(frozen=True)
class Batch:
    """A run's files as they go from op to op, in run order: those still going, and those that
    failed or were held (partition key -> why), which later ops leave alone. `repeats` are
    files with the bytes of an earlier file of the run (key -> that file's key): loaded once
    it is published, they are skipped as identical to it."""

    files: tuple[HashedVersion, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)
    repeats: dict[str, str] = field(default_factory=dict)
    # Every file the run named, in its order: failures are told in it.
    named: tuple[str, ...] = ()


def each_file(
    context: dg.OpExecutionContext,
    batch: Batch,
    work: Callable[[HashedVersion], None],
    reported: AbstractSet[str] = frozenset(),
    workers: int = 1,
) -> Batch:
    """Runs `work` on every file of the batch, a failure failing only its file. A passing fault
    fails the step once every file had its turn, so its retry policy runs it again (work done is
    not redone: each step resumes or finds its output); any other leaves the file behind, and
    the run fails naming it at its end. `reported`: files a retried attempt already finished.
    `workers` > 1 runs that many files at once (data work that releases the GIL)."""

    def attempt(hashed: HashedVersion) -> Exception | None:
        if hashed.partition_key in reported:
            return None
        try:
            work(hashed)
        except Exception as exc:
            return exc
        return None

    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix=context.op_def.name) as pool:
            outcomes = list(pool.map(attempt, batch.files))
    else:
        outcomes = [attempt(hashed) for hashed in batch.files]
    going: list[HashedVersion] = []
    failed = dict(batch.failed)
    transient: list[Exception] = []
    for hashed, exc in zip(batch.files, outcomes, strict=True):
        if exc is None:
            going.append(hashed)
            continue
        failure = step_failure(exc)
        context.log.error(f"{hashed.partition_key} failed: {type(exc).__name__}: {str(exc).strip()}")
        if failure is None:
            transient.append(exc)
        else:
            failed[hashed.partition_key] = failure.description or ""
    tag_retry(context, bool(transient))
    if transient:
        announce_retry(context, transient[0])
        raise transient[0]
    left = replace(batch, files=tuple(going), failed=failed)
    if batch.files and not going:
        # No file left to hand on: the step fails here, so "re-execute from failure" starts at it.
        fail_for_files_left_behind(context, left)
    return left


def fail_for_files_left_behind(context: dg.OpExecutionContext, batch: Batch) -> None:
    """Ends a run whose files did not all make it with a failure naming each and why; the
    others are loaded. No retry would change a bad file, so none is asked for."""
    if not batch.failed:
        return
    left = dict(batch.failed)
    for key, original in batch.repeats.items():
        if original in left and key not in left:
            left[key] = f"the same bytes as {original}, which was not published"
    order = {key: position for position, key in enumerate(batch.named)}
    failed = sorted(left.items(), key=lambda item: order.get(item[0], len(order)))
    # A run of one file fails with that file's reason, which names it.
    listed = "; ".join(f"{key}: {why}" for key, why in failed)
    raise dg.Failure(
        failed[0][1] if len(batch.named) == 1 else f"{len(failed)} of {len(batch.named)} file(s) failed: {listed}",
        metadata={"failed_files": dg.MetadataValue.json(batch.failed)},
        allow_retries=False,
    )


def reported_in_this_run(context: dg.OpExecutionContext, asset_key: dg.AssetKey, checks: bool = False) -> set[str]:
    """The partitions this run already reported for the asset: materializations, or with
    `checks` check evaluations. A retried step reports no file twice."""
    if not context.retry_number:
        return set()
    kind = dg.DagsterEventType.ASSET_CHECK_EVALUATION if checks else dg.DagsterEventType.ASSET_MATERIALIZATION
    records = context.instance.get_records_for_run(context.run_id, of_type=kind).records
    events = [record.event_log_entry.dagster_event for record in records]
    if checks:
        return {e.event_specific_data.partition for e in events if e and e.event_specific_data.asset_key == asset_key}
    return {e.partition for e in events if e and e.asset_key == asset_key}


def staged_materialization(
    spec: SourceSpec, hashed: HashedVersion, metadata: dict[str, Any]
) -> dg.AssetMaterialization:
    """A staged file as its partition's materialization, with the file's hash as the data version
    (the tags by which Dagster's events carry a user-provided one)."""
    return dg.AssetMaterialization(
        asset_key=spec.name,
        partition=hashed.partition_key,
        metadata=metadata,
        tags={"dagster/data_version": hashed.file_hash, "dagster/data_version_is_user_provided": "true"},
    )


def held_message(key: str, failures: Sequence[str]) -> str:
    return (
        f"{key} is held, not published: blocking check(s) failed: {', '.join(failures)}; the table consumers "
        "read is unchanged until a data steward releases it (`harmonizer held release`) or discards it"
    )


def published_materialization(spec: SourceSpec, key: str, published: Publication) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        asset_key=f"{spec.name}_published",
        partition=key,
        metadata={
            "source_id": published.source_id,
            "file_hash": published.file_hash,
            "inserted": published.inserted,
            "updated": published.updated,
            "unchanged": published.unchanged,
        },
    )
