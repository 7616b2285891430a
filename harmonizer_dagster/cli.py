"""`harmonizer`: terminal helpers around the warehouse (the Dagster UI and CLI do the running)."""

import argparse
import sys
from pathlib import Path

from harmonizer_dagster.core.settings import current
from harmonizer_dagster.core.spec import load_specs
from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster.core.warehouse.duckdb import DuckDBWarehouse


def summary() -> int:
    """Where the results are, and what each source's files came to."""
    store = open_warehouse(current("HARMONIZER_WAREHOUSE_URL"))
    location = f"DuckDB file {Path(store.path).resolve()}" if isinstance(store, DuckDBWarehouse) else store.description
    print(f"Warehouse: {location}, schema {store.schema_name}")
    rows = store.query(
        "SELECT source_type, partition_key, status, records_in_file, records_imported, records_failed, "
        "records_skipped FROM {schema}.sources ORDER BY source_type, partition_key"
    )
    print(f"\n{'source':<20} {'file':<28} {'status':<10} {'in file':>8} {'imported':>8} {'failed':>7} {'skipped':>7}")
    for source, key, status, *counts in rows:
        print(f"{source:<20} {key:<28} {status:<10} " + " ".join(f"{c or 0:>8}" for c in counts))
    print("\nTables:")
    for spec in load_specs(Path(current("HARMONIZER_SOURCES_DIR"))):
        total = store.query(f"SELECT count(*) FROM {store.table(spec.name)}")[0][0]
        print(f"  {store.schema_name}.{spec.name}: {total} rows")
    for table in ("data_quality_issues", "failed_records"):
        print(f"  {store.schema_name}.{table}: {store.query(f'SELECT count(*) FROM {{schema}}.{table}')[0][0]} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harmonizer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help="print where the results are and what each loaded file came to")
    args = parser.parse_args(argv)
    if args.command == "summary":
        return summary()
    return 2


if __name__ == "__main__":
    sys.exit(main())
