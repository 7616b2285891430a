"""Jobs: registering landed files as partitions, and ingesting a whole landing zone at once.

The ingest jobs fan out over every landed file with the very ops the source assets are built
from, so `dagster job execute` exercises the same code path as a materialization in the UI.
"""

import hashlib
import json
import re
from collections.abc import Sequence

import dagster as dg

from harmonizer_dagster.core.files import FileVersion, locate
from harmonizer_dagster.core.landing import scan_folder
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.orchestration.assets import SourceOps, partitions_for
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource

MANIFEST = "manifest.json"


def _mapping_key(partition_key: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_]", "_", partition_key)[:60]
    return f"{readable}_{hashlib.sha256(partition_key.encode()).hexdigest()[:8]}"


def register_new_files(context: dg.OpExecutionContext, spec: SourceSpec, landing: LandingZone) -> list[str]:
    """Adds a dynamic partition for every landed file of the source that has none yet."""
    # The same listing rules as the landing sensors: both must agree on what a landed file is.
    try:
        keys = [item.key for item in scan_folder(landing.landing_path, spec.name)]
    except NotADirectoryError:
        keys = []
    partitions = partitions_for(spec)
    known = set(context.instance.get_dynamic_partitions(partitions.name or spec.name))
    new = [k for k in keys if k not in known]
    if new:
        context.instance.add_dynamic_partitions(partitions.name or spec.name, new)
    context.log.info(f"{spec.name}: {len(keys)} file(s) landed, {len(new)} newly registered")
    return keys


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
        description=f"Loads one file of {spec.title} (one partition per run).",
        tags={"source": spec.name, **host_tags},
    )


def _discover_op(spec: SourceSpec) -> dg.OpDefinition:
    @dg.op(name=f"{spec.name}_discover", out=dg.DynamicOut(FileVersion), tags={"source": spec.name})
    def discover(context: dg.OpExecutionContext, landing: LandingZone):
        for key in register_new_files(context, spec, landing):
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


def build_ingest_jobs(specs: Sequence[SourceSpec], ops: dict[str, SourceOps]) -> list[dg.JobDefinition]:
    """`ingest_landing` loads every landed file; `smoke_test` does the same, then checks the manifest."""
    discover = {spec.name: _discover_op(spec) for spec in specs}

    def pipeline(spec: SourceSpec):
        source_ops = ops[spec.name]
        return (
            discover[spec.name]()
            .map(lambda f: source_ops.upsert(source_ops.harmonize(source_ops.validate(source_ops.hash(f)))))
            .collect()
        )

    @dg.graph(name="ingest_landing")
    def ingest_landing():
        for spec in specs:
            pipeline(spec)

    @dg.graph(name="smoke_test")
    def smoke_test():
        _expected_counts_op(specs)(**{spec.name: pipeline(spec) for spec in specs})

    return [
        ingest_landing.to_job(description="Ingests every file in the landing zone, source by source."),
        smoke_test.to_job(
            description="Ingests the landing zone, then fails unless every count matches its manifest.json "
            "(the CI smoke test over the shipped samples)."
        ),
    ]
