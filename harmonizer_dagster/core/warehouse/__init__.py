"""Warehouses: where canonical tables, the sources registry and data-quality records live."""

from pathlib import Path

from harmonizer_dagster.core.warehouse.base import PublishCounts, StagedPartition, Warehouse


def open_warehouse(url: str, schema: str = "harmonizer") -> Warehouse:
    """`duckdb:///relative/file.duckdb`, `duckdb:////absolute/file.duckdb` or `postgresql://...`."""
    if url.startswith("duckdb://"):
        from harmonizer_dagster.core.warehouse.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(Path(url.removeprefix("duckdb:///")), schema)
    if url.startswith(("postgresql://", "postgres://")):
        from harmonizer_dagster.core.warehouse.postgres import PostgresWarehouse

        return PostgresWarehouse(url, schema)
    raise ValueError("warehouse URL must start with duckdb:// or postgresql://")


__all__ = ["PublishCounts", "StagedPartition", "Warehouse", "open_warehouse"]
