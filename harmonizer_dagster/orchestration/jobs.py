"""Jobs: registering landed files as partitions, and loading many files in one run.

The ingest jobs and each source's files job fan out over files with the very ops the source
assets are built from, so `dagster job execute` and the landing sensors' runs exercise the same
code path as a materialization in the UI: each file is its own partition, with its own steps,
materialization and checks, and a bad file fails only its own steps.
"""

import hashlib
import json
import re
from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from harmonizer_dagster.core.files import FileVersion, locate
from harmonizer_dagster.core.landing import Ignored, scan_folder
from harmonizer_dagster.core.pipeline import HashedVersion
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.orchestration.assets import SourceOps, partitions_for
from harmonizer_dagster.orchestration.checks import evaluate_all_checks
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource
from harmonizer_dagster.orchestration.triage import report_metadata

MANIFEST = "manifest.json"


def _mapping_key(partition_key: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_]", "_", partition_key)[:60]
    return f"{readable}_{hashlib.sha256(partition_key.encode()).hexdigest()[:8]}"


def register_new_files(context: dg.OpExecutionContext, spec: SourceSpec, landing: LandingZone) -> list[str]:
    """Adds a dynamic partition for every landed file of the source that has none yet."""
    # The same listing rules as the landing sensors: both must agree on what a landed file is.
    ignored: list[Ignored] = []
    try:
        keys = [item.key for item in scan_folder(landing.landing_path, spec.name, ignored)]
    except NotADirectoryError:
        keys = []
    for item in ignored:
        context.log.info(f"{spec.name}: {item.key} ignored: {item.reason}")
    new = register(context.instance, spec, keys)
    context.log.info(f"{spec.name}: {len(keys)} file(s) landed, {new} newly registered, {len(ignored)} ignored")
    return keys


def register(instance: dg.DagsterInstance, spec: SourceSpec, keys: Sequence[str]) -> int:
    """Adds the keys that are not partitions of the source yet; returns how many were added."""
    name = partitions_for(spec).name or spec.name
    known = set(instance.get_dynamic_partitions(name))
    new = [key for key in keys if key not in known]
    if new:
        instance.add_dynamic_partitions(name, new)
    return len(new)


def build_register_job(specs: Sequence[SourceSpec]) -> dg.JobDefinition:
    @dg.op(description="Registers every landed file as a partition of its source asset.")
    def register_landed_files(context: dg.OpExecutionContext, landing: LandingZone) -> dict[str, list[str]]:
        return {spec.name: register_new_files(context, spec, landing) for spec in specs}

    @dg.job(
        name="register_file_versions",
        description="Registers landed files as partitions, so they can be materialized from the UI or the CLI.",
    )
    def register_file_versions():
        register_landed_files()

    return register_file_versions


def build_source_job(spec: SourceSpec, host_tags: dict[str, str]):
    """Materializes one file version of one source: what the UI, sensors and backfills launch."""
    return dg.define_asset_job(
        name=f"load_{spec.name}",
        selection=dg.AssetSelection.assets(spec.name, f"{spec.name}_published"),
        description=f"Loads one file of {spec.title} (one partition per run); load_{spec.name}_files loads several.",
        tags={"source": spec.name, **host_tags},
    )


class FilesConfig(dg.Config):
    partition_keys: list[str] = Field(
        default=[],
        description="The files to load, by partition key (a landed path, or an s3:// URI); empty: every "
        "landed file, registering the new ones.",
    )


def files_run_config(spec: SourceSpec, partition_keys: Sequence[str]) -> dict:
    """The run config that makes a run of the source's files job load exactly these files."""
    return {"ops": {f"{spec.name}_discover": {"config": {"partition_keys": list(partition_keys)}}}}


def _discover_op(spec: SourceSpec) -> dg.OpDefinition:
    @dg.op(
        name=f"{spec.name}_discover",
        out=dg.DynamicOut(FileVersion),
        tags={"source": spec.name},
        description="Hands each file to load to its own steps: the configured ones, or every landed file.",
    )
    def discover(context: dg.OpExecutionContext, config: FilesConfig, landing: LandingZone):
        keys = config.partition_keys
        if keys:
            register(context.instance, spec, keys)
        else:
            keys = register_new_files(context, spec, landing)
        for key in dict.fromkeys(keys):
            yield dg.DynamicOutput(locate(landing.landing_path, spec.name, key), mapping_key=_mapping_key(key))

    return discover


def _expected_counts_op(specs: Sequence[SourceSpec]) -> dg.OpDefinition:
    @dg.op(
        name="check_expected_counts",
        ins={spec.name: dg.In(dg.Nothing) for spec in specs},
        description="Fails the run when any count in the warehouse differs from the landing zone's manifest.json.",
    )
    def check_expected_counts(context: dg.OpExecutionContext, landing: LandingZone, warehouse: WarehouseResource):
        manifest = json.loads((landing.landing_path / MANIFEST).read_text())
        store = warehouse.open()
        mismatches = []
        checked = 0
        for source, files in manifest.items():
            for key, expected in files.items():
                actual = store.partition_counts(source, key) or {}
                for name, value in expected.items():
                    if name in actual:
                        checked += 1
                        if actual[name] != value:
                            mismatches.append(f"{source}/{key}: {name} = {actual[name]}, expected {value}")
                    elif name.startswith("records_"):
                        mismatches.append(f"{source}/{key}: {name} missing (was the file loaded?)")
        if mismatches:
            raise dg.Failure("counts differ from the manifest", metadata={"mismatches": "\n".join(mismatches)})
        context.log.info(f"all {checked} expected counts match the manifest")

    return check_expected_counts


def _checks_op(spec: SourceSpec) -> dg.OpDefinition:
    @dg.op(
        name=f"{spec.name}_checks",
        # The upsert's output lives in the warehouse, not in an IO manager: this op follows it
        # and takes the file version from the harmonize step.
        ins={"hashed": dg.In(HashedVersion), "upserted": dg.In(dg.Nothing)},
        out={"checked": dg.Out(str), "passed": dg.Out(str, is_required=False)},
        tags={"source": spec.name},
        description="Evaluates the source's asset checks on the loaded file; passes it on only if no "
        "blocking check failed.",
    )
    def run_checks(context: dg.OpExecutionContext, warehouse: WarehouseResource, hashed: HashedVersion):
        failures = evaluate_all_checks(context, warehouse.open(), spec, hashed.partition_key)
        yield dg.Output(hashed.partition_key, "checked")
        if failures:
            context.log.warning(f"{hashed.partition_key} is not published: blocking check(s) failed: {failures}")
        else:
            yield dg.Output(hashed.partition_key, "passed")

    return run_checks


def _publish_op(spec: SourceSpec) -> dg.OpDefinition:
    @dg.op(
        name=f"{spec.name}_publish",
        tags={"source": spec.name},
        description="Publishes a file version that passed every blocking check, as the published asset does.",
    )
    def publish(context: dg.OpExecutionContext, warehouse: WarehouseResource, partition_key: str) -> None:
        published = warehouse.open().mark_published(spec.name, partition_key)
        if not published:
            raise dg.Failure(f"{partition_key} has no completed load to publish")
        context.log_event(
            dg.AssetMaterialization(
                asset_key=f"{spec.name}_published",
                partition=partition_key,
                metadata={"source_id": published[0], "file_hash": published[1]},
            )
        )

    return publish


def _report_op(spec: SourceSpec) -> dg.OpDefinition:
    @dg.op(
        name=f"{spec.name}_report",
        ins={"checked": dg.In(list[str])},
        tags={"source": spec.name},
        description="Refreshes the source's data-quality report once its files are loaded.",
    )
    def report(context: dg.OpExecutionContext, warehouse: WarehouseResource, checked: list[str]) -> None:
        store = warehouse.open()
        # A landing area with no file yet leaves a new warehouse without its tables.
        store.migrate([spec])
        metadata = report_metadata(store, spec)
        context.log_event(dg.AssetMaterialization(asset_key=f"{spec.name}_dq_report", metadata=metadata))

    return report


def build_ingest_jobs(
    specs: Sequence[SourceSpec], ops: dict[str, SourceOps], host_tags: dict[str, str]
) -> tuple[list[dg.JobDefinition], dict[str, dg.JobDefinition]]:
    """`ingest_landing` loads every landed file; `smoke_test` does the same, then checks the
    manifest; `load_<source>_files`, by source, loads the files its run config names (what the
    landing sensors launch) or every landed file of the source.

    Each file goes through the asset's four ops, then its asset checks and publication, and
    each source's report is refreshed: loading through a job counts exactly as materializing."""
    discover = {spec.name: _discover_op(spec) for spec in specs}
    checks = {spec.name: _checks_op(spec) for spec in specs}
    publish = {spec.name: _publish_op(spec) for spec in specs}
    report = {spec.name: _report_op(spec) for spec in specs}

    def load_one(spec: SourceSpec, file):
        source_ops = ops[spec.name]
        hashed = source_ops.harmonize(source_ops.validate(source_ops.hash(file)))
        checked, passed = checks[spec.name](hashed=hashed, upserted=source_ops.upsert(hashed))
        publish[spec.name](passed)
        return checked

    def pipeline(spec: SourceSpec):
        return report[spec.name](discover[spec.name]().map(lambda file: load_one(spec, file)).collect())

    @dg.graph(name="ingest_landing")
    def ingest_landing():
        for spec in specs:
            pipeline(spec)

    @dg.graph(name="smoke_test")
    def smoke_test():
        _expected_counts_op(specs)(**{spec.name: pipeline(spec) for spec in specs})

    def files_job(spec: SourceSpec) -> dg.JobDefinition:
        @dg.graph(name=f"load_{spec.name}_files")
        def load_files():
            pipeline(spec)

        return load_files.to_job(
            description=f"Loads several files of {spec.title} in one run, each as its own partition; "
            "a file whose step fails leaves the others loaded.",
            # The queue's one-run-per-source and per-host limits hold for these runs too.
            tags={"source": spec.name, **host_tags},
        )

    jobs = [
        ingest_landing.to_job(
            description="Ingests every file in the landing zone, source by source, with the asset checks, "
            "publication and reports a materialization gets."
        ),
        smoke_test.to_job(
            description="Ingests the landing zone, then fails unless every count matches its manifest.json "
            "(the CI smoke test over the shipped samples)."
        ),
    ]
    return jobs, {spec.name: files_job(spec) for spec in specs}
