"""Write-audit-publish per declared source, as one graph of ops every run shape shares.

The multi-asset `<source>` + `<source>_published` is the graph

    <source>_partitions -> hash -> validate -> deduplicate -> stage -> audit -> publish

Each op does its own work for every file of the run (one partition, or a backfill's range), a
failure failing only its file. `stage` reports each file as a materialization of `<source>` (the
version, staged), `audit` evaluates each file's checks and holds a version failing a blocking
one, `publish` moves each version that passed into the table consumers read and reports it as a
materialization of `<source>_published`. The jobs that load landed files (`jobs.py`) run the
very same ops after an op that names their files.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

import dagster as dg

from harmonizer_dagster.core.files import locate
from harmonizer_dagster.core.pipeline import HashedVersion
from harmonizer_dagster.core.publishing import HeldVersion, publish
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.orchestration.checks import check_output_names, check_specs, report_audit
from harmonizer_dagster.orchestration.outcomes import record_lost_outcomes
from harmonizer_dagster.orchestration.partitions import backfill_policy, partitions_for
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource, resource_keys
from harmonizer_dagster.orchestration.steps import (
    Batch,
    column_schema,
    deduplicate_file,
    each_file,
    fail_for_files_left_behind,
    faults_classified,
    hash_file,
    hash_summary,
    held_message,
    published_materialization,
    reported_in_this_run,
    stage_file,
    stage_summary,
    staged_materialization,
    transient_retry_policy,
    validate_file,
)

# Files the data steps (validate, deduplicate) work on at once.
FILES_AT_ONCE = 2


@dataclass(frozen=True)
class SourceOps:
    """The steps of one source, each an op over every file of a run."""

    hash: dg.OpDefinition
    validate: dg.OpDefinition
    deduplicate: dg.OpDefinition
    stage: dg.OpDefinition
    audit: dg.OpDefinition
    publish: dg.OpDefinition

    def load(self, files: object) -> "Loaded":
        """Composes the steps after the op that names the files."""
        staged, materialized = self.stage(self.deduplicate(self.validate(self.hash(files))))
        audited, *checks = self.audit(staged)
        published, done = self.publish(audited)
        return Loaded(materialized, checks, audited, published, done)


@dataclass(frozen=True)
class Loaded:
    """The outputs of a composed load: those standing for the staged asset, its checks and the
    published asset; the audited files (what a source's report reads); and `done`, what an op
    that runs once the files are published waits on."""

    materialized: object
    checks: list[object]
    audited: object
    published: object
    done: object


def _opened(context: dg.OpExecutionContext) -> Warehouse:
    warehouse: WarehouseResource = context.resources.warehouse
    return warehouse.open()


def build_source_ops(spec: SourceSpec, with_s3: bool = False) -> SourceOps:
    """`with_s3`: the code location configures S3, so the hash op takes its `s3` resource."""
    tags = {"source": spec.name}
    published_key = dg.AssetKey(f"{spec.name}_published")

    def each(
        context: dg.OpExecutionContext, store: Warehouse, batch: Batch, work: Callable[[HashedVersion], None], **kw
    ) -> Batch:
        # The DuckDB file stays open from file to file, and waiting processes are let in.
        with store.kept_open():
            return each_file(context, batch, work, **kw)

    @dg.op(
        name=f"{spec.name}_hash",
        # Named here, not as arguments, because `s3` is there only where S3 is configured.
        required_resource_keys=resource_keys(with_s3, "warehouse", "landing"),
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Streams each file through SHA-256 and registers its version; bytes already loaded are skipped.",
    )
    def hash_op(context: dg.OpExecutionContext, files: list[str]) -> Batch:
        landing: LandingZone = context.resources.landing
        store = _opened(context)
        with faults_classified(context):
            # What earlier runs of the source could not record (the unrecorded_failures sensor
            # does the same where a daemon runs), before this run's versions go.
            record_lost_outcomes(context.instance, store, [spec.name], context.log)
        hashed: list[HashedVersion] = []
        seen: dict[str, str] = {}
        repeats: dict[str, str] = {}

        def hash_one(key: str) -> None:
            version = hash_file(context, spec, locate(landing.landing_path, spec.name, key), store, landing)
            context.log.info(f"{key}: {hash_summary(version)}")
            if not version.skipped and version.file_hash in seen:
                repeats[key] = seen[version.file_hash]
                return
            seen.setdefault(version.file_hash, key)
            hashed.append(version)

        # Files named, not hashed yet: each fails alone, as any later step's file would.
        pending = Batch(tuple(_unhashed(key) for key in files), named=tuple(files))
        left = each(context, store, pending, lambda unhashed: hash_one(unhashed.partition_key))
        return Batch(tuple(hashed), left.failed, repeats, left.named)

    @dg.op(
        name=f"{spec.name}_validate",
        required_resource_keys={"warehouse", "landing"},
        tags=tags,
        description="Checks every record against the spec's rules and harmonizes the values of those that pass.",
    )
    def validate_op(context: dg.OpExecutionContext, batch: Batch) -> Batch:
        landing: LandingZone = context.resources.landing
        store = _opened(context)

        def validate(hashed: HashedVersion) -> None:
            if summary := validate_file(spec, hashed, store, landing, context.log.info):
                context.log.info(f"{hashed.partition_key}: {summary}")

        # Two files at once: their data work releases the GIL, and a Pi has two cores or more.
        return each(context, store, batch, validate, workers=FILES_AT_ONCE)

    @dg.op(
        name=f"{spec.name}_deduplicate",
        required_resource_keys={"warehouse"},
        tags=tags,
        description="Resolves duplicate natural keys in each file: the last occurrence wins.",
    )
    def deduplicate_op(context: dg.OpExecutionContext, batch: Batch) -> Batch:
        store = _opened(context)

        def deduplicate(hashed: HashedVersion) -> None:
            if summary := deduplicate_file(spec, hashed, store):
                context.log.info(f"{hashed.partition_key}: {summary}")

        return each(context, store, batch, deduplicate, workers=FILES_AT_ONCE)

    @dg.op(
        name=f"{spec.name}_stage",
        out={
            "staged": dg.Out(Batch, is_required=False),
            # The asset `<source>`: each file's materialization is reported as it is staged.
            "materialized": dg.Out(dg.Nothing, is_required=False),
        },
        required_resource_keys={"warehouse"},
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Writes each version's rows, issues and failed records to the warehouse's stage, one "
        "transaction each; the table consumers read is not touched.",
    )
    def stage_op(context: dg.OpExecutionContext, batch: Batch):
        store = _opened(context)

        def stage(hashed: HashedVersion) -> None:
            _, metadata = stage_file(spec, hashed, store, context.run_id)
            context.log.info(f"{hashed.partition_key} {stage_summary(store, metadata)}")
            context.log_event(staged_materialization(spec, hashed, metadata))

        staged = each(context, store, batch, stage, reported=reported_in_this_run(context, dg.AssetKey(spec.name)))
        if "staged" in context.selected_output_names:
            yield dg.Output(staged, "staged")
        else:
            fail_for_files_left_behind(context, staged)

    check_outs = {name: dg.Out(dg.Nothing, is_required=False) for name in check_output_names(spec)}

    @dg.op(
        name=f"{spec.name}_audit",
        out={"audited": dg.Out(Batch, is_required=False), **check_outs},
        required_resource_keys={"warehouse"},
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Evaluates every check of each staged version and reports it as the asset's checks; "
        "a version failing a blocking check is held.",
    )
    def audit_op(context: dg.OpExecutionContext, batch: Batch):
        store = _opened(context)
        failed = dict(batch.failed)

        def audit(hashed: HashedVersion) -> None:
            result = report_audit(context, store, spec, hashed.partition_key, hashed.source_id)
            if failures := result.blocking_failures:
                key = hashed.partition_key
                # Held: waiting for a steward. Otherwise a version judged again (published already).
                judged = f"blocking check(s) failed: {', '.join(failures)}; it is not published"
                failed[key] = held_message(key, failures) if result.held else judged
                context.log.warning(failed[key])

        done = reported_in_this_run(context, dg.AssetKey(spec.name), checks=True)
        audited = each(context, store, batch, audit, reported=done)
        passed = tuple(h for h in audited.files if h.partition_key not in failed)
        audited = replace(audited, files=passed, failed={**failed, **audited.failed})
        if "audited" in context.selected_output_names:
            yield dg.Output(audited, "audited")
        else:
            fail_for_files_left_behind(context, audited)

    @dg.op(
        name=f"{spec.name}_publish",
        # The asset `<source>_published`: each file's materialization is reported as it is published.
        out={"published": dg.Out(dg.Nothing, is_required=False), "done": dg.Out(dg.Nothing, is_required=False)},
        required_resource_keys=resource_keys(with_s3, "warehouse", "landing"),
        tags=tags,
        retry_policy=transient_retry_policy(),
        description="Publishes each version that passed its blocking checks into the table consumers read, "
        "one transaction each; a file that failed or was held fails the run at the end, naming it.",
    )
    def publish_op(context: dg.OpExecutionContext, batch: Batch):
        landing: LandingZone = context.resources.landing
        store = _opened(context)
        # Files with the bytes of an earlier file of the run come last, once that one is
        # published: hashed again, each is skipped as identical to it and published as it is.
        repeats = tuple(_unhashed(key) for key, original in batch.repeats.items() if original not in batch.failed)

        def publish_one(hashed: HashedVersion) -> None:
            if hashed in repeats:
                _publish_repeat(context, spec, store, landing, hashed.partition_key)
                return
            try:
                published = publish(store, spec, hashed.partition_key, context.run_id, hashed.source_id)
            except (HeldVersion, ValueError) as exc:
                raise dg.Failure(str(exc), allow_retries=False) from None
            context.log_event(published_materialization(spec, hashed.partition_key, published))

        done = reported_in_this_run(context, published_key)
        published = each(context, store, replace(batch, files=batch.files + repeats), publish_one, reported=done)
        fail_for_files_left_behind(context, published)
        if "done" in context.selected_output_names:
            yield dg.Output(None, "done")

    return SourceOps(hash_op, validate_op, deduplicate_op, stage_op, audit_op, publish_op)


def _unhashed(key: str) -> HashedVersion:
    """A file named by the run, before its hash step: only its key is known."""
    return HashedVersion(
        source="",
        partition_key=key,
        path="",
        file_hash="",
        size_bytes=0,
        version="",
        source_id=0,
        stage_dir="",
        started_at=0.0,
    )


def _publish_repeat(
    context: dg.OpExecutionContext, spec: SourceSpec, store: Warehouse, landing: LandingZone, key: str
) -> None:
    hashed = hash_file(context, spec, locate(landing.landing_path, spec.name, key), store, landing)
    context.log.info(f"{key}: {hash_summary(hashed)}")
    _, metadata = stage_file(spec, hashed, store, context.run_id)
    context.log_event(staged_materialization(spec, hashed, metadata))
    published = publish(store, spec, key, context.run_id, hashed.source_id)
    context.log_event(published_materialization(spec, key, published))


def build_source_asset(spec: SourceSpec, ops: SourceOps, host_tags: dict[str, str]) -> dg.AssetsDefinition:
    # Runs of the asset's page and of asset backfills inherit these (see run_coordinator.py).
    tags = {"source": spec.name, **host_tags}

    @dg.op(name=f"{spec.name}_partitions", tags={"source": spec.name})
    def run_partitions(context: dg.OpExecutionContext) -> list[str]:
        """The files of the run: its partition, or a backfill's range of them."""
        return list(context.partition_keys)

    @dg.graph_multi_asset(
        name=spec.name,
        outs={
            spec.name: dg.AssetOut(
                key=spec.name,
                description=f"{spec.title}, as staged and audited. {spec.description}".strip(),
                owners=[spec.owner],
                kinds={spec.format, "pandera"},
                metadata={
                    "dagster/column_schema": column_schema(spec),
                    "natural_key": ", ".join(spec.natural_key),
                    "spec_file": str(spec.path.name) if spec.path else "",
                },
                tags=tags,
                is_required=False,
            ),
            f"{spec.name}_published": dg.AssetOut(
                key=f"{spec.name}_published",
                description=f"{spec.title} as consumers read it: the file versions that passed every blocking "
                "data-quality check, or that a data steward released.",
                owners=[spec.owner],
                kinds={"sql"},
                tags=tags,
                is_required=False,
            ),
        },
        partitions_def=partitions_for(spec),
        backfill_policy=backfill_policy(),
        check_specs=check_specs(spec),
        can_subset=True,
    )
    def source_asset():
        loaded = ops.load(run_partitions())
        return {
            spec.name: loaded.materialized,
            f"{spec.name}_published": loaded.published,
            **dict(zip(check_output_names(spec), loaded.checks, strict=True)),
        }

    if not spec.freshness_hours:
        return source_asset
    # A source whose next version is overdue is flagged (the legacy "no file this quarter" check):
    # Dagster's freshness daemon marks the asset failing its policy once no version has loaded
    # within the window.
    policy = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=spec.freshness_hours))
    return source_asset.map_asset_specs(
        lambda asset_spec: (
            dg.apply_freshness_policy(asset_spec, policy) if asset_spec.key == dg.AssetKey(spec.name) else asset_spec
        )
    )
