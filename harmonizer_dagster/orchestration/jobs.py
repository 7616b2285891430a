"""Jobs: registering landed files as partitions, and loading many files in one run.

The ingest jobs and each source's files job run the very ops the source assets are built from
(`assets.py`), after an op that names the files to load, so `dagster job execute` and the
landing sensors' runs count exactly as materializations in the UI: each file is its own
partition, with its own materialization, checks and publication, and a bad file fails only
itself. Each step takes every file of the run: a run of a thousand small files costs a few
events per file, where a step per file would cost tens.
"""

import json
from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from harmonizer_dagster.core.landing import Ignored, scan_folder
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.orchestration.assets import SourceOps
from harmonizer_dagster.orchestration.partitions import partitions_for
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource
from harmonizer_dagster.orchestration.run_config import files_job_name
from harmonizer_dagster.orchestration.steps import faults_classified
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


def _files_to_load_op(spec: SourceSpec) -> dg.OpDefinition:
    @dg.op(
        name=f"{spec.name}_files_to_load",
        tags={"source": spec.name},
        description="Names the files the run loads, each registered as a partition: those its config names, "
        "else every landed file of the source.",
    )
    def files_to_load(context: dg.OpExecutionContext, config: FilesConfig, landing: LandingZone) -> list[str]:
        keys = list(dict.fromkeys(config.partition_keys))
        if keys:
            register(context.instance, spec, keys)
            return keys
        return register_new_files(context, spec, landing)

    return files_to_load


def _report_op(spec: SourceSpec) -> dg.OpDefinition:
    @dg.op(
        name=f"{spec.name}_refresh_report",
        ins={"audited": dg.In(dg.Nothing)},
        tags={"source": spec.name},
        description="Refreshes the source's data-quality report once its files are audited (their issues "
        "and checks are what it reports), whether or not each is then published.",
    )
    def refresh_report(context: dg.OpExecutionContext, warehouse: WarehouseResource) -> None:
        store = warehouse.open()
        with faults_classified(context):
            # A landing area with no file yet leaves a new warehouse without its tables.
            store.migrate([spec])
            metadata = report_metadata(store, spec)
        context.log_event(dg.AssetMaterialization(asset_key=f"{spec.name}_dq_report", metadata=metadata))

    return refresh_report


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
    specs: Sequence[SourceSpec], ops: dict[str, SourceOps], host_tags: dict[str, str]
) -> tuple[list[dg.JobDefinition], dict[str, dg.JobDefinition]]:
    """`ingest_landing` loads every landed file; `smoke_test` does the same, then checks the
    manifest; `load_<source>_files`, by source, loads the files its run config names (what the
    landing sensors launch) or every landed file of the source.

    Each runs the source's own ops over its files (hash, validate, deduplicate, stage, audit,
    publish), then refreshes the source's report: loading through a job counts exactly as
    materializing."""
    names = {spec.name: _files_to_load_op(spec) for spec in specs}
    reports = {spec.name: _report_op(spec) for spec in specs}

    def load(spec: SourceSpec) -> object:
        """The source's files loaded; returns what the run waits on: publication and report."""
        loaded = ops[spec.name].load(names[spec.name]())
        return loaded.done, reports[spec.name](loaded.audited)

    @dg.graph(name="ingest_landing")
    def ingest_landing():
        for spec in specs:
            load(spec)

    @dg.graph(name="smoke_test")
    def smoke_test():
        _expected_counts_op(specs)(**{spec.name: load(spec)[0] for spec in specs})

    def files_job(spec: SourceSpec) -> dg.JobDefinition:
        @dg.graph(name=files_job_name(spec.name))
        def load_files():
            load(spec)

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
