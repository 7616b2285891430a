"""A file of one row repeated millions of times: every copy but the last is a duplicate key,
recorded as an issue. Loaded end to end (the four steps, then every check in one transaction)
into a fresh DuckDB file and a fresh PostgreSQL database, each in a process of its own.

    python benchmarks/duplicates.py [--copies 4000000] [--skip-postgres]

Prints seconds, records/s and peak RSS per warehouse, and the duplicate issues recorded
(targets: peak RSS at most 1 GiB, at least 100k records/s, every duplicate recorded).
PostgreSQL: HARMONIZER_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path

from pipeline import peak_rss_kb, registry_spec, run_pipeline
from scratch import drop_databases, recreated_database, run_load_case

from harmonizer_dagster.core.quality import checks_for, run_check
from harmonizer_dagster.core.samples import write_registry_csv
from harmonizer_dagster.core.warehouse import open_warehouse

DATABASE = "harmonizer_bench_duplicates"
LINES_PER_WRITE = 100_000


def write_copies(path: Path, copies: int) -> None:
    """A gzip CSV: the header, then one registry row `copies` times."""
    one = path.with_name("one.csv")
    write_registry_csv(one, 1, seed=3)
    header, row = one.read_bytes().splitlines(keepends=True)[:2]
    one.unlink()
    with gzip.open(path, "wb", compresslevel=6) as handle:
        handle.write(header)
        for first in range(0, copies, LINES_PER_WRITE):
            handle.write(row * min(LINES_PER_WRITE, copies - first))


def load(file: Path, url: str, work: Path) -> dict:
    spec = registry_spec()
    store = open_warehouse(url)
    started = time.perf_counter()
    records = run_pipeline(file, url, work)
    with store.transaction():
        passed = {check.name: run_check(store, spec, check, file.name, "bench").passed for check in checks_for(spec)}
    seconds = time.perf_counter() - started
    recorded = store.query(
        "SELECT count(*), count(DISTINCT source_line_number) FROM {schema}.data_quality_issues "
        "WHERE issue_type = 'duplicate_key'"
    )[0]
    return {
        "records": records,
        "seconds": seconds,
        "peak_rss_kb": peak_rss_kb(),
        "duplicates_recorded": int(recorded[0]),
        "distinct_lines": int(recorded[1]),
        "failed_checks": sorted(name for name, ok in passed.items() if not ok),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4_000_000)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(load(args.file, args.url, args.work)))
        return

    folder = Path(tempfile.mkdtemp(prefix="duplicates_bench_"))
    try:
        file = folder / f"copies_{args.copies}.csv.gz"
        write_copies(file, args.copies)
        print(f"{file.name}: {file.stat().st_size / 2**20:.1f} MiB gzipped, {args.copies:,} copies of one row\n")
        print(f"{'warehouse':<10} {'seconds':>8} {'records/s':>10} {'peak RSS MiB':>13} {'duplicates':>11}")
        targets = [("duckdb", f"duckdb:///{folder / 'duplicates.duckdb'}")]
        if not args.skip_postgres:
            targets.append(("postgres", recreated_database(DATABASE)))
        for backend, url in targets:
            work = folder / f"work_{backend}"
            work.mkdir()
            try:
                r = run_load_case(__file__, file, url, work)
            except RuntimeError as exc:
                print(f"{backend:<10} failed:\n{exc}", flush=True)
                continue
            rss = r["peak_rss_kb"] / 1024
            print(
                f"{backend:<10} {r['seconds']:>8.1f} {r['records'] / r['seconds']:>10,.0f} {rss:>13.0f} "
                f"{r['duplicates_recorded']:>11,}  failed checks: {', '.join(r['failed_checks']) or 'none'}",
                flush=True,
            )
            every = r["duplicates_recorded"] == r["distinct_lines"] == args.copies - 1
            print(
                f"  targets: peak RSS <= 1024 MiB {'ok' if rss <= 1024 else 'MISSED'}; >= 100k records/s "
                f"{'ok' if r['records'] / r['seconds'] >= 100_000 else 'MISSED'}; every duplicate recorded "
                f"{'ok' if every else 'MISSED'}",
                flush=True,
            )
    finally:
        if not args.skip_postgres:
            drop_databases(DATABASE)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
