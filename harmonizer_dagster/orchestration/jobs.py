"""Jobs: registering landed files as partitions, and loading many files in one run.

The ingest jobs and each source's files job load file after file in one step, through the very
steps the source assets are built from (`steps.py`, which also loads a backfill's range), so
`dagster job execute` and the landing sensors' runs count exactly as materializations in the
UI: each file is its own partition, with its own materialization and checks, and a bad file
fails only itself. One step per source keeps a run of a thousand small files to five events per
file, where a step per file would cost tens.
"""

import json
from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from harmonizer_dagster.core.landing import Ignored, scan_folder
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.orchestration.partitions import partitions_for
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource, resource_keys
from harmonizer_dagster.orchestration.steps import (
    faults_classified,
    load_files_in_turn,
    raise_for_failed_files,
    transient_retry_policy,
)
from harmonizer_dagster.orchestration.triage import report_metadata

MANIFEST = "manifest.json"


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
    """Materializes one file version of one source, or a backfill's range of them."""
    return dg.define_asset_job(
        name=f"load_{spec.name}",
        selection=dg.AssetSelection.assets(spec.name, f"{spec.name}_published"),
        description=f"Loads one file of {spec.title} per run, or a backfill's range of them; "
        f"load_{spec.name}_files loads the files its config names.",
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
    return {"ops": {f"{spec.name}_load_files": {"config": {"partition_keys": list(partition_keys)}}}}


def _load_files_op(spec: SourceSpec, with_s3: bool) -> dg.OpDefinition:
    @dg.op(
        name=f"{spec.name}_load_files",
        out=dg.Out(dg.Nothing),
        # Named here, not as arguments, because `s3` is there only where S3 is configured.
        required_resource_keys=resource_keys(with_s3, "warehouse", "landing"),
        tags={"source": spec.name},
        retry_policy=transient_retry_policy(),
        description="Loads each file as its own partition (hash, validate, deduplicate, stage, audit, "
        "publication), then refreshes the source's report; a file that fails leaves the others loaded.",
    )
    def load_files(context: dg.OpExecutionContext, config: FilesConfig) -> None:
        landing: LandingZone = context.resources.landing
        warehouse: WarehouseResource = context.resources.warehouse
        keys = list(dict.fromkeys(config.partition_keys))
        if keys:
            register(context.instance, spec, keys)
        else:
            keys = register_new_files(context, spec, landing)
        store = warehouse.open()
        # A file's load is a dozen transactions, and opening a DuckDB file for each costs more
        # than a small file's data work: the run keeps it open, and lets waiting processes in.
        with store.kept_open():
            # One step for all the files: a step costs Dagster tens of events, a file five.
            failed = load_files_in_turn(context, spec, keys, store, landing)
            with faults_classified(context):
                # A landing area with no file yet leaves a new warehouse without its tables.
                store.migrate([spec])
                metadata = report_metadata(store, spec)
        context.log_event(dg.AssetMaterialization(asset_key=f"{spec.name}_dq_report", metadata=metadata))
        raise_for_failed_files(context, failed, len(keys))

    return load_files


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


def build_ingest_jobs(
    specs: Sequence[SourceSpec], host_tags: dict[str, str], with_s3: bool = False
) -> tuple[list[dg.JobDefinition], dict[str, dg.JobDefinition]]:
    """`ingest_landing` loads every landed file; `smoke_test` does the same, then checks the
    manifest; `load_<source>_files`, by source, loads the files its run config names (what the
    landing sensors launch) or every landed file of the source.

    Each file goes through the asset's steps, then its asset checks and publication, and each
    source's report is refreshed: loading through a job counts exactly as materializing."""
    load = {spec.name: _load_files_op(spec, with_s3) for spec in specs}

    @dg.graph(name="ingest_landing")
    def ingest_landing():
        for spec in specs:
            load[spec.name]()

    @dg.graph(name="smoke_test")
    def smoke_test():
        _expected_counts_op(specs)(**{spec.name: load[spec.name]() for spec in specs})

    def files_job(spec: SourceSpec) -> dg.JobDefinition:
        @dg.graph(name=f"load_{spec.name}_files")
        def load_files():
            load[spec.name]()

        return load_files.to_job(
            description=f"Loads several files of {spec.title} in one run, each as its own partition; "
            "a file that fails leaves the others loaded.",
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
