"""What a file's steps do as ops run them: each step of one file, how its faults end the step
(a passing fault is retried, any other fails the file), and many files taken through every
step in turn within one step (write, audit, publish), each reported as its own partition."""

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg

from harmonizer_dagster.core.faults import is_transient
from harmonizer_dagster.core.files import FileVersion, RefusedFile, locate
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
from harmonizer_dagster.core.publishing import HeldVersion, publish
from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.tables import sql_type
from harmonizer_dagster.orchestration.checks import evaluate_all_checks
from harmonizer_dagster.orchestration.outcomes import record_lost_outcomes
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


def raise_for_failed_files(context: dg.OpExecutionContext, errors: dict[str, Exception], total: int) -> None:
    """Fails the step once every file had its turn: with a passing fault when one failed a file
    (the step's retry policy runs it again, and the files already loaded are skipped by their
    hash), else with the list of files and why, which no retry would change."""
    if not errors:
        return
    failures = {key: step_failure(exc) for key, exc in errors.items()}
    transient = [errors[key] for key, failure in failures.items() if failure is None]
    tag_retry(context, bool(transient))
    if transient:
        announce_retry(context, transient[0])
        raise transient[0]
    reasons = {key: failure.description or "" for key, failure in failures.items() if failure is not None}
    raise dg.Failure(
        f"{len(reasons)} of {total} file(s) failed: " + "; ".join(f"{key}: {why}" for key, why in reasons.items()),
        metadata={"failed_files": dg.MetadataValue.json(reasons)},
        allow_retries=False,
    )


@dataclass(frozen=True)
class Publication:
    """What a run of files does once a file's checks are in: publish it (`publish`), and whether
    a failed blocking check fails the file, as it fails a materialization of its partition
    (`blocking_fails`), or only holds it, as the files jobs always have."""

    publish: bool = True
    blocking_fails: bool = False


def load_files_in_turn(
    context: dg.OpExecutionContext,
    spec: SourceSpec,
    keys: Sequence[str],
    store: Warehouse,
    landing: LandingZone,
    publication: Publication = Publication(),
) -> dict[str, Exception]:
    """Each file through the asset's four steps, then its audit and publication, reported as a
    materialization of its partition would report them; returns the files that failed, and why.
    A retried step leaves out the files an earlier attempt of it finished and reported.

    A file's validation and harmonization (data work, mostly outside the GIL) run in a thread
    while the previous file's audit and publication (warehouse queries and Dagster events) run
    here. Hashing, which registers the version, stays in file order after the previous file's
    staging: arrival order is file order, and a file with the bytes of the one before it is
    still skipped as already loaded."""
    with faults_classified(context):
        # What earlier runs of the source could not record (the unrecorded_failures sensor does
        # the same where a daemon runs), before this run's versions go.
        record_lost_outcomes(context.instance, store, [spec.name], context.log)
    failed: dict[str, Exception] = {}
    if context.retry_number:
        finished = finished_in_this_run(context, spec, publication.publish)
        keys = [key for key in keys if key not in finished]

    def fail(key: str, exc: Exception) -> None:
        failed[key] = exc
        context.log.error(f"{key} failed: {type(exc).__name__}: {str(exc).strip()}")

    staged: HashedVersion | None = None  # the file whose audit and publication come next

    def hash_and_prepare(key: str) -> tuple[HashedVersion, Future[None]] | None:
        try:
            hashed = hash_file(context, spec, locate(landing.landing_path, spec.name, key), store, landing)
            return hashed, ahead.submit(_prepare, context, spec, hashed, store, landing)
        except Exception as exc:
            fail(key, exc)
            return None

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{spec.name}-prepare") as ahead:
        for key in [*keys, None]:
            preparing = hash_and_prepare(key) if key is not None else None
            # A file with the bytes of the one still to publish waits for it: hashed again once
            # that one is published, it is skipped as loaded.
            repeated = preparing is not None and staged is not None and preparing[0].file_hash == staged.file_hash
            if repeated:
                preparing[1].result()
            if staged is not None:
                try:
                    audit_and_publish(context, spec, store, staged.partition_key, publication)
                except Exception as exc:
                    fail(staged.partition_key, exc)
                staged = None
            if repeated:
                preparing = hash_and_prepare(key)
            if preparing is not None:
                hashed, prepared = preparing
                try:
                    prepared.result()
                    stage_and_report(context, spec, hashed, store)
                    staged = hashed
                except Exception as exc:
                    fail(hashed.partition_key, exc)
    return failed


def _prepare(
    context: dg.OpExecutionContext, spec: SourceSpec, hashed: HashedVersion, store: Warehouse, landing: LandingZone
) -> None:
    validate_file(spec, hashed, store, landing, context.log.info)
    deduplicate_file(spec, hashed, store)


def stage_and_report(context: dg.OpExecutionContext, spec: SourceSpec, hashed: HashedVersion, store: Warehouse) -> None:
    """Stages one file of several and reports it as its partition's materialization, with the
    data version (the file's hash) the asset's own output would give it."""
    key = hashed.partition_key
    _, metadata = stage_file(spec, hashed, store, context.run_id)
    # One line per file: what the asset's four steps would log, in short.
    context.log.info(f"{key}: {hash_summary(hashed)}; {stage_summary(store, metadata)}")
    context.log_event(
        dg.AssetMaterialization(asset_key=spec.name, partition=key, metadata=metadata, tags=data_version(hashed))
    )


def data_version(hashed: HashedVersion) -> dict[str, str]:
    """The tags by which Dagster's events carry a user-provided data version."""
    return {"dagster/data_version": hashed.file_hash, "dagster/data_version_is_user_provided": "true"}


def audit_and_publish(
    context: dg.OpExecutionContext, spec: SourceSpec, store: Warehouse, key: str, publication: Publication
) -> None:
    """A staged file's asset checks, then its publication unless a blocking check held it."""
    failures = evaluate_all_checks(context, store, spec, key)
    if failures:
        message = held_message(key, failures)
        if publication.blocking_fails:
            raise dg.Failure(message, allow_retries=False)
        context.log.warning(message)
    elif publication.publish:
        context.log_event(published_materialization(context, spec, store, key))


def held_message(key: str, failures: Sequence[str]) -> str:
    return (
        f"{key} is held, not published: blocking check(s) failed: {', '.join(failures)}; the table consumers "
        "read is unchanged until a data steward releases it (`harmonizer held release`) or discards it"
    )


def finished_in_this_run(context: dg.OpExecutionContext, spec: SourceSpec, publish: bool) -> set[str]:
    """The files whose last event this run has recorded: their publication, or their checks
    where the run publishes nothing."""
    if publish:
        kind, asset = dg.DagsterEventType.ASSET_MATERIALIZATION, dg.AssetKey(f"{spec.name}_published")
    else:
        kind, asset = dg.DagsterEventType.ASSET_CHECK_EVALUATION, dg.AssetKey(spec.name)
    events = [
        record.event_log_entry.dagster_event
        for record in context.instance.get_records_for_run(context.run_id, of_type=kind).records
    ]
    if publish:
        return {event.partition for event in events if event and event.asset_key == asset}
    return {event.event_specific_data.partition for event in events if event and event.asset_key == asset}


def published_materialization(
    context: dg.OpExecutionContext, spec: SourceSpec, store: Warehouse, key: str
) -> dg.AssetMaterialization:
    """Publishes the file version's staged rows into the table consumers read and returns the
    materialization that says so; a held version is refused."""
    try:
        published = publish(store, spec, key, context.run_id)
    except HeldVersion as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    except ValueError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
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
