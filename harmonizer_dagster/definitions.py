"""The code location: every source spec in the sources folder becomes an asset, wired here.

Settings come from the environment when set (as `EnvVar`, so values such as a PostgreSQL
URL with a password never appear in the UI) and fall back to the embedded defaults, so a
new user runs everything with no server and no configuration.
"""

import os
from pathlib import Path

import dagster as dg

from harmonizer_dagster.core.settings import DEFAULTS, current
from harmonizer_dagster.core.spec import load_specs
from harmonizer_dagster.orchestration.assets import build_source_asset, build_source_ops
from harmonizer_dagster.orchestration.jobs import build_ingest_jobs, build_register_job, build_source_job
from harmonizer_dagster.orchestration.resources import LandingZone, WarehouseResource


def setting(name: str) -> str | dg.EnvVar:
    """The environment variable when it is set, else the embedded default."""
    return dg.EnvVar(name) if name in os.environ else DEFAULTS[name]


def build_definitions() -> dg.Definitions:
    specs = load_specs(Path(current("HARMONIZER_SOURCES_DIR")))
    ops = {spec.name: build_source_ops(spec) for spec in specs}
    landing = LandingZone(
        landing_dir=setting("HARMONIZER_LANDING_DIR"),
        staging_dir=setting("HARMONIZER_STAGING_DIR"),
        batch_rows=dg.EnvVar.int("HARMONIZER_BATCH_ROWS") if "HARMONIZER_BATCH_ROWS" in os.environ else 5_000,
    )
    return dg.Definitions(
        assets=[build_source_asset(spec, ops[spec.name]) for spec in specs],
        jobs=[
            *(build_source_job(spec) for spec in specs),
            build_register_job(specs),
            *build_ingest_jobs(specs, ops),
        ],
        resources={"warehouse": WarehouseResource(url=setting("HARMONIZER_WAREHOUSE_URL")), "landing": landing},
        # Steps run in the run worker's process: the multiprocess executor re-imports the code
        # location for every step (seconds each, far more on a Pi) and the steps pass only
        # small references to staged files, so a process per step buys nothing.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
