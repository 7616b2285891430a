"""Speed and memory of the pipeline against baselines, measured side by side in one run.

    python benchmarks/pipeline.py --rows 1000000

Cases, each in a process of its own so its peak RSS is its own:
  a  full pipeline (hash, validate, harmonize, upsert) into DuckDB
  b  bare DuckDB: CREATE TABLE AS SELECT * FROM read_csv(file)
  c  a legacy-style row-by-row Python loader (csv reader, per-row checks, one INSERT per row,
     a checkpoint commit every 5,000 rows) into PostgreSQL, on the first 100,000 rows
  d  full pipeline into PostgreSQL
  e  psycopg executemany upsert (INSERT ... ON CONFLICT DO UPDATE) of the raw rows into PostgreSQL
  f  a second run of the same, unchanged file into the DuckDB warehouse of (a), next to
     hashing the file alone
  checks  every data-quality check of the file loaded by (a): at most 20% of (a)
PostgreSQL: HARMONIZER_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
the benchmark creates and drops a database of its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from harmonizer_dagster.core.files import FileVersion, fingerprint
from harmonizer_dagster.core.pipeline import harmonize_step, hash_step, upsert_step, validate_step
from harmonizer_dagster.core.quality import checks_for, run_check
from harmonizer_dagster.core.samples import write_registry_csv
from harmonizer_dagster.core.settings import DEFAULTS
from harmonizer_dagster.core.spec import load_specs
from harmonizer_dagster.core.warehouse import open_warehouse

ROW_LOOP_ROWS = 100_000
DATABASE = "harmonizer_bench"


def registry_spec():
    return {s.name: s for s in load_specs(Path(DEFAULTS["HARMONIZER_SOURCES_DIR"]))}["business_registry"]


def run_pipeline(file: Path, url: str, work: Path) -> int:
    spec = registry_spec()
    store = open_warehouse(url)
    store.migrate([spec])
    hashed = hash_step(spec, FileVersion(spec.name, file.name, str(file)), store, work / "staging", "bench")
    validate_step(spec, hashed)
    harmonize_step(spec, hashed)
    return upsert_step(spec, hashed, store, "bench").records_in_file


def run_ctas(file: Path, work: Path) -> int:
    import duckdb

    with duckdb.connect(str(work / "ctas.duckdb")) as con:
        con.execute(f"CREATE OR REPLACE TABLE registry AS SELECT * FROM read_csv('{file}')")
        return con.execute("SELECT count(*) FROM registry").fetchone()[0]


def run_row_loop(file: Path, url: str) -> int:
    """What the hand-made loaders did: one record at a time, checkpoint every 5,000."""
    zip_ok = re.compile(r"^\d{5}(-\d{4})?$")
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS row_loop (corp_number TEXT PRIMARY KEY, legal_name TEXT, status TEXT, "
            "zip TEXT, email TEXT, phone TEXT)"
        )
        conn.execute("TRUNCATE row_loop")
        conn.commit()
        count = 0
        with file.open(newline="") as handle:
            for record in csv.DictReader(handle):
                if count == ROW_LOOP_ROWS:
                    break
                count += 1
                name = (record["Legal Name"] or "").strip()
                zip_code = (record["Home Office Zip"] or "").strip()
                if not name or not re.match(r"^[\d-]+$", zip_code):
                    continue
                if len(zip_code) == 4:
                    zip_code = "0" + zip_code
                digits = re.sub(r"\D", "", record["Phone"] or "")
                conn.execute(
                    "INSERT INTO row_loop VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (corp_number) DO UPDATE SET "
                    "legal_name = EXCLUDED.legal_name, status = EXCLUDED.status, zip = EXCLUDED.zip, "
                    "email = EXCLUDED.email, phone = EXCLUDED.phone",
                    (
                        record["Corp Number"].strip(),
                        " ".join(name.split()),
                        record["Status"].strip().upper(),
                        zip_code if zip_ok.match(zip_code) else None,
                        record["Email"].strip().lower(),
                        "+1" + digits,
                    ),
                )
                if count % 5_000 == 0:
                    conn.commit()
        conn.commit()
        return count


def run_executemany(file: Path, url: str) -> int:
    with psycopg.connect(url) as conn:
        with file.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            columns = [re.sub(r"\W", "_", h.lower()) for h in header]
            conn.execute("DROP TABLE IF EXISTS executemany_upsert")
            definition = ", ".join(c + " TEXT" for c in columns)
            conn.execute(f"CREATE TABLE executemany_upsert ({definition}, PRIMARY KEY ({columns[0]}))")
            sql = (
                f"INSERT INTO executemany_upsert VALUES ({', '.join(['%s'] * len(columns))}) "
                f"ON CONFLICT ({columns[0]}) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns[1:])
            )
            count = 0
            batch: list[list[str]] = []
            with conn.cursor() as cursor:
                for row in reader:
                    batch.append(row)
                    if len(batch) == 5_000:
                        cursor.executemany(sql, batch)
                        conn.commit()
                        count += len(batch)
                        batch = []
                if batch:
                    cursor.executemany(sql, batch)
                    count += len(batch)
        conn.commit()
        return count


def run_case(case: str, file: Path, url: str, work: Path) -> int:
    if case == "pipeline_duckdb":
        return run_pipeline(file, f"duckdb:///{work / 'pipeline.duckdb'}", work)
    if case == "rerun_duckdb":
        return run_pipeline(file, f"duckdb:///{work / 'pipeline.duckdb'}", work)
    if case == "checks_duckdb":
        spec = registry_spec()
        store = open_warehouse(f"duckdb:///{work / 'pipeline.duckdb'}")
        for check in checks_for(spec):
            run_check(store, spec, check, file.name, "bench")
        return len(checks_for(spec))
    if case == "hash_only":
        return fingerprint(file).size_bytes
    if case == "ctas_duckdb":
        return run_ctas(file, work)
    if case == "row_loop_postgres":
        return run_row_loop(file, url)
    if case == "pipeline_postgres":
        return run_pipeline(file, url, work)
    if case == "executemany_postgres":
        return run_executemany(file, url)
    raise ValueError(case)


def measure(case: str, file: Path, url: str, work: Path) -> dict:
    """Runs one case in a child process; wall time and that child's own peak RSS (VmHWM, which,
    unlike getrusage, does not inherit the parent's high-water mark across fork and exec)."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--case", case, "--file", str(file), "--work", str(work)],
        env={**os.environ, "HARMONIZER_BENCH_DB_URL": url},
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    output = json.loads(child.stdout.read())
    if child.wait() != 0:
        raise SystemExit(f"case {case} failed")
    seconds = time.perf_counter() - started
    return {"case": case, "seconds": seconds, "rows": output["rows"], "peak_rss_mb": output["peak_rss_kb"] / 1024}


def peak_rss_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--only", help="comma-separated cases to run, e.g. pipeline_duckdb for a 10M-row memory check")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        rows = run_case(args.case, args.file, os.environ["HARMONIZER_BENCH_DB_URL"], args.work)
        print(json.dumps({"rows": rows, "peak_rss_kb": peak_rss_kb()}))
        return

    file = args.data_dir / f"registry_{args.rows}.csv"
    if not file.exists():
        print(f"generating {file} ...", flush=True)
        write_registry_csv(file, args.rows, seed=42)
    size_mb = file.stat().st_size / 2**20
    work = args.data_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    admin_url = os.environ.get("HARMONIZER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = admin_url.rsplit("/", 1)[0] + "/" + DATABASE
    cases = ["pipeline_duckdb", "checks_duckdb", "ctas_duckdb", "hash_only", "rerun_duckdb"]
    if not args.skip_postgres:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DATABASE}")
        cases += ["row_loop_postgres", "pipeline_postgres", "executemany_postgres"]

    if args.only:
        cases = [c for c in cases if c in args.only.split(",")]
    print(f"{file.name}: {size_mb:.0f} MiB, {args.rows:,} generated rows (plus duplicates)\n")
    print(f"{'case':<22} {'rows':>10} {'seconds':>9} {'rows/s':>10} {'peak RSS MiB':>13}")
    results = {}
    for case in cases:
        result = measure(case, file, url, work)
        results[case] = result
        rows = result["rows"] if case not in ("hash_only", "rerun_duckdb", "checks_duckdb") else args.rows
        result["rows_per_s"] = rows / result["seconds"]
        print(
            f"{case:<22} {rows:>10,} {result['seconds']:>9.2f} {result['rows_per_s']:>10,.0f} "
            f"{result['peak_rss_mb']:>13.0f}",
            flush=True,
        )

    if args.only:
        return
    print("\nratios (targets in brackets):")
    a, b = results["pipeline_duckdb"], results["ctas_duckdb"]
    print(f"  (a) pipeline vs (b) bare DuckDB CTAS: {b['seconds'] / a['seconds']:.2f}x the speed [> 1]")
    print(
        f"  (f) unchanged re-run vs hashing alone: {results['rerun_duckdb']['seconds']:.2f}s vs "
        f"{results['hash_only']['seconds']:.2f}s [re-run costs no more than hashing]"
    )
    print(f"  (a) peak RSS: {a['peak_rss_mb']:.0f} MiB [< 1024]")
    checks = results["checks_duckdb"]["seconds"]
    print(f"  all checks vs (a): {checks:.2f}s, {checks / a['seconds']:.0%} of the pipeline [<= 20%]")
    if not args.skip_postgres:
        c, d, e = results["row_loop_postgres"], results["pipeline_postgres"], results["executemany_postgres"]
        print(f"  (a) pipeline vs (c) row-by-row loader: {a['rows_per_s'] / c['rows_per_s']:.1f}x rows/s [>= 10]")
        print(f"  (d) pipeline vs (e) executemany upsert: {d['rows_per_s'] / e['rows_per_s']:.1f}x rows/s [>= 5]")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
