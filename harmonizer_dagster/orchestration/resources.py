"""Resources: every external place the pipeline touches, configured from the environment."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from harmonizer_dagster.core.pipeline import DEFAULT_BATCH_ROWS
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The warehouse holding canonical tables, the sources registry and data-quality records."""

    url: str = Field(
        description="duckdb:///relative.duckdb, duckdb:////absolute.duckdb or postgresql://user@host/db. "
        "Set HARMONIZER_WAREHOUSE_URL; default: the embedded DuckDB file .harmonizer/warehouse.duckdb."
    )
    schema_name: str = Field(default="harmonizer", description="Schema that holds every table the project creates.")

    def open(self) -> Warehouse:
        return open_warehouse(self.url, self.schema_name)


class LandingZone(dg.ConfigurableResource):
    """Where source files arrive and where steps stage their outputs between ops."""

    landing_dir: str = Field(
        description="Folder with one subfolder per source (HARMONIZER_LANDING_DIR; default: the shipped samples)."
    )
    staging_dir: str = Field(
        description="Scratch space for staged batches, removed after each successful upsert "
        "(HARMONIZER_STAGING_DIR; default: .harmonizer/staging)."
    )
    batch_rows: int = Field(
        default=DEFAULT_BATCH_ROWS,
        description="Rows per checkpointed batch: a killed step resumes from its last completed batch.",
    )

    @property
    def landing_path(self) -> Path:
        return Path(self.landing_dir)

    @property
    def staging_path(self) -> Path:
        return Path(self.staging_dir)
