"""What one scrape of GET /metrics costs over 100,000 file versions and 5M issues.

    python benchmarks/metrics_scrape.py [--versions 100000] [--issues 5000000] [--postgres]

Fills a fresh warehouse (a temporary DuckDB file, or with --postgres a database of its own on
HARMONIZER_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/postgres) with bulk
SQL: versions of 20 sources (completed, some failed or skipped, a few processing), issues of
five types and two severities spread over them, a failed record per ten issues, and the counts
per version and tallies per source that loads keep. Then times the endpoint in-process
(Starlette's test client: the scrape's own work, no network), best and median of ten. Target: under 200 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from scratch import scratch_database
from starlette.testclient import TestClient

from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster.core.warehouse.duckdb import DuckDBWarehouse
from harmonizer_dagster.core.warehouse.tables import SOURCE_SUMS, TALLY_NAMES, VERSION_COUNTS
from harmonizer_dagster.web.metrics import create_metrics_app

DATABASE = "harmonizer_metrics_bench"
# Issues inserted per statement, within DuckDB's memory limit.
CHUNK = 500_000


def fill(url: str, versions: int, issues: int) -> None:
    store = open_warehouse(url)
    if isinstance(store, DuckDBWarehouse):
        # Bulk-inserting millions of keyed rows at once needs more than a load's memory limit.
        store.memory_limit = "3GB"
    store.migrate([])
    # A statement per transaction: DuckDB's memory limit holds a transaction's changes.
    store.query(
        "INSERT INTO {schema}.sources (source_type, source_name, source_version, partition_key, file_name, "
        "file_uri, file_hash, file_size_bytes, status, records_in_file, records_processed, records_imported, "
        "records_failed, records_skipped, records_inserted, records_updated, records_unchanged, "
        "import_started_at, import_completed_at, published_at, heartbeat_at) "
        "SELECT 'source_' || CAST(mod(n, 20) AS VARCHAR), 'Source', CAST(n AS VARCHAR), "
        "'file_' || CAST(n AS VARCHAR) || '.csv', 'f.csv', 'file:///f.csv', md5(CAST(n AS VARCHAR)), 1000000, "
        "CASE WHEN mod(n, 20000) = 0 THEN 'processing' WHEN mod(n, 97) = 0 THEN 'failed' "
        "WHEN mod(n, 31) = 0 THEN 'skipped' ELSE 'completed' END, 10000, 10000, 9800, 150, 50, 5000, 2000, 2800, "
        "now() - INTERVAL '1 hour', now() - INTERVAL '50 minutes', now() - INTERVAL '49 minutes', "
        "now() - INTERVAL '50 minutes' FROM generate_series(1, %s) AS g(n)",
        (versions,),
    )
    for first in range(1, issues + 1, CHUNK):
        store.query(
            "INSERT INTO {schema}.data_quality_issues (source_id, source_type, partition_key, file_hash, "
            "source_line_number, issue_type, severity, field_name, invalid_value, resolution_status) "
            "SELECT v, 'source_' || CAST(mod(v, 20) AS VARCHAR), 'file', 'h', n, "
            "'issue_type_' || CAST(mod(n, 5) AS VARCHAR), CASE WHEN mod(n, 3) = 0 THEN 'error' ELSE 'warning' END, "
            "'f', 'x', CASE WHEN mod(n, 7) = 0 THEN 'resolved' ELSE 'pending' END "
            "FROM (SELECT n, 1 + mod(n, %s) AS v "
            "FROM generate_series(CAST(%s AS BIGINT), CAST(%s AS BIGINT)) AS g(n)) AS s",
            (versions, first, min(first + CHUNK - 1, issues)),
        )
    store.query(
        "INSERT INTO {schema}.failed_records (source_id, source_type, partition_key, file_hash, "
        "source_line_number, record_data, error_type, error_message, reprocessed) "
        "SELECT v, 'source_' || CAST(mod(v, 20) AS VARCHAR), 'file', 'h', n, '{}', 'validation_error', 'bad', "
        "mod(n, 4) = 0 FROM (SELECT n, 1 + mod(n, %s) AS v FROM generate_series(1, %s) AS g(n)) AS s",
        (versions, issues // 10),
    )
    # Every version's counts and the source tallies they add up to, as loads keep them.
    for table, select in VERSION_COUNTS.items():
        store.query(f"DELETE FROM {{schema}}.{table}")
        store.query(f"INSERT INTO {{schema}}.{table} " + select.replace("{versions}", "TRUE"))
    store.query("DELETE FROM {schema}.source_tallies")
    for select in SOURCE_SUMS:
        store.query(f"INSERT INTO {{schema}}.source_tallies ({TALLY_NAMES}) " + select.replace("{versions}", "TRUE"))
    if url.startswith("postgres"):
        store.query("ANALYZE")


def measure(url: str, versions: int, issues: int) -> None:
    started = time.perf_counter()
    fill(url, versions, issues)
    print(f"  filled in {time.perf_counter() - started:.0f} s")
    client = TestClient(create_metrics_app(open_warehouse(url)))
    times = []
    for _ in range(10):
        start = time.perf_counter()
        response = client.get("/metrics")
        times.append(time.perf_counter() - start)
        assert response.status_code == 200 and "harmonizer_scrape_warehouse_busy 0.0" in response.text
    lines = [line for line in response.text.splitlines() if not line.startswith("#")]
    print(
        f"  GET /metrics: best {min(times) * 1000:.0f} ms, median {statistics.median(times) * 1000:.0f} ms, "
        f"{len(lines)} samples, {len(response.content):,} bytes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--issues", type=int, default=5_000_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    title = f"{args.versions:,} versions, {args.issues:,} issues"
    if not args.postgres:
        with tempfile.TemporaryDirectory() as folder:
            print(f"DuckDB, {title}:")
            measure(f"duckdb:///{Path(folder) / 'bench.duckdb'}", args.versions, args.issues)
        return
    with scratch_database(DATABASE) as url:
        print(f"PostgreSQL, {title}:")
        measure(url, args.versions, args.issues)


if __name__ == "__main__":
    main()
