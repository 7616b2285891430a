"""How fast the triage page answers over a file with 100,000 pending issues.

    python benchmarks/dq_page.py [--issues 100000] [--postgres]

Fills a fresh warehouse (a temporary DuckDB file, or with --postgres a database of its own on
HARMONIZER_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/postgres) with
issues of two types and two severities, then times each view in-process (Starlette's test
client: the page's own work, no network), best of five. Target: the grouped view under 1 s.
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
from harmonizer_dagster.web.app import Settings, create_app

DATABASE = "harmonizer_dq_bench"
VIEWS = {
    "grouped view (all pending)": "/issues",
    "one group, last page": "/issues?type=invalid_date&severity=error&page={last}",
    "filtered by field and file": "/issues?field=home_office_zip&partition=big.csv",
    "sources overview": "/",
}


def fill(url: str, issues: int) -> None:
    store = open_warehouse(url)
    store.migrate([])
    store.query(
        "INSERT INTO {schema}.data_quality_issues (source_id, source_type, partition_key, file_hash, "
        "source_line_number, source_record_id, issue_type, severity, field_name, invalid_value, expected_format) "
        "SELECT 1, 'business_registry', 'big.csv', 'h', n, CAST(n AS VARCHAR), "
        "CASE WHEN mod(n, 10) = 0 THEN 'invalid_date' ELSE 'invalid_zip_code' END, "
        "CASE WHEN mod(n, 4) = 0 THEN 'error' ELSE 'warning' END, 'home_office_zip', CAST(mod(n, 977) AS VARCHAR), "
        "'5 digits' FROM generate_series(1, %s) AS g(n)",
        (issues,),
    )


def measure(url: str, issues: int) -> None:
    fill(url, issues)
    client = TestClient(create_app(Settings(url)))
    last = max(1, issues // 20 // 50)
    for name, path in VIEWS.items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            response = client.get(path.format(last=last))
            times.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text[:500]
        print(f"  {name:<30} best {min(times):.3f} s  median {statistics.median(times):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=100_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    if not args.postgres:
        with tempfile.TemporaryDirectory() as folder:
            print(f"DuckDB, {args.issues:,} pending issues:")
            measure(f"duckdb:///{Path(folder) / 'bench.duckdb'}", args.issues)
        return
    with scratch_database(DATABASE) as url:
        print(f"PostgreSQL, {args.issues:,} pending issues:")
        measure(url, args.issues)


if __name__ == "__main__":
    main()
