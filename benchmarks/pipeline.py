"""Speed and memory of the pipeline against baselines, measured side by side in one run.

    python benchmarks/pipeline.py --rows 1000000

This is the library path: the steps called in-process. The product path, whole `dagster`
commands as users run them next to a trivial Dagster project, is benchmarks/product.py.

Cases, each in a process of its own so its peak RSS is its own:
  a  full pipeline (hash, validate, harmonize, upsert) into DuckDB
  b  bare DuckDB: CREATE TABLE AS SELECT * FROM read_csv(file)
  c  a legacy-style row-by-row Python loader (csv reader, per-row checks, one INSERT per row,
     a checkpoint commit every 5,000 rows) into PostgreSQL, on the first 100,000 rows
  d  full pipeline into PostgreSQL
  e  psycopg executemany upsert (INSERT ... ON CONFLICT DO UPDATE) of the raw rows into PostgreSQL
  f  a second run of the same, unchanged file into the DuckDB warehouse of (a), next to
     hashing the file alone
  checks  every data-quality check of the file loaded by (a), in one transaction as the main job
     runs them: at most 20% of (a)
  dlt  the peer tool: dlt (the `bench` extra) loading pyarrow batches of the file with
     write_disposition="merge" and primary key corp_number, into DuckDB and into PostgreSQL
  sling  the other peer: Sling's own command line (the binary of the sling-linux-amd64 package)
     replicating the file into PostgreSQL, mode incremental, primary key corp_number; a first
     load into an empty table, which Sling inserts as it comes (duplicate keys too)
benchmarks/peers.py configures both peers, as benchmarks/product.py runs them under Dagster.
--threads 1,2 runs (a) and (b) once per core count: the child is pinned to that many cores
(sched_setaffinity) and told the count through POLARS_MAX_THREADS and HARMONIZER_THREADS;
every other case runs on all cores. Every case runs --repeat times (3 by default) and its median
run is kept: on a 2-core machine single runs vary by 5%, as much as some targets' margins. Each
child imports only what its case needs (psycopg and dlt only where they are used; the Sling case
measures the binary it starts). Results are kept in <data-dir>/results_<rows>.json, so a
10M-row memory run (--only pipeline_duckdb --rows 10000000) is compared with the 1M-row run.
PostgreSQL: HARMONIZER_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
the benchmark creates and drops a database of its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import operator
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from peers import DLT_ENVIRONMENT, dlt_pipeline, dlt_rows, registry_source, sling_cli_environment, sling_replication
from scratch import drop_databases, recreated_database, registry_file

from harmonizer_dagster.core.files import FileVersion, fingerprint
from harmonizer_dagster.core.pipeline import deduplicate_step, hash_step, stage_step, validate_step
from harmonizer_dagster.core.publishing import audit, publish
from harmonizer_dagster.core.quality import checks_for, run_check
from harmonizer_dagster.core.settings import DEFAULTS, engine_threads
from harmonizer_dagster.core.spec import load_specs
from harmonizer_dagster.core.warehouse import open_warehouse

ROW_LOOP_ROWS = 100_000
DATABASE = "harmonizer_bench"
ALL_CORES = len(os.sched_getaffinity(0))
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
# Cases run once per --threads core count; the others run on all cores.
SCALED_CASES = ("pipeline_duckdb", "ctas_duckdb")


def registry_spec():
    return {s.name: s for s in load_specs(Path(DEFAULTS["HARMONIZER_SOURCES_DIR"]))}["business_registry"]


def run_pipeline(file: Path, url: str, work: Path) -> int:
    spec = registry_spec()
    store = open_warehouse(url)
    landed = FileVersion(spec.name, file.name, str(file), str(file.parent))
    hashed = hash_step(spec, landed, store, work / "staging", "bench")
    validate_step(spec, hashed)
    deduplicate_step(spec, hashed)
    staged = stage_step(spec, hashed, store, "bench")
    if not audit(store, spec, hashed.partition_key, "bench").held:
        publish(store, spec, hashed.partition_key, "bench")
    return staged.records_in_file


def run_ctas(file: Path, work: Path) -> int:
    import duckdb

    with duckdb.connect(str(work / "ctas.duckdb"), config={"threads": engine_threads()}) as con:
        con.execute(f"CREATE OR REPLACE TABLE registry AS SELECT * FROM read_csv('{file}')")
        return con.execute("SELECT count(*) FROM registry").fetchone()[0]


def run_row_loop(file: Path, url: str) -> int:
    """What the hand-made loaders did: one record at a time, checkpoint every 5,000."""
    import psycopg

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
    import psycopg

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


def run_dlt_merge(file: Path, url: str, work: Path) -> int:
    """The peer: dlt merging the file, read as pyarrow batches of text columns, on corp_number."""
    pipeline = dlt_pipeline(url, work / "dlt")
    pipeline.run(registry_source(file))
    return dlt_rows(pipeline)


def run_sling(file: Path, url: str, work: Path) -> int:
    """The other peer: Sling's command line replicating the file, incremental on corp_number."""
    replication = work / "sling_replication.json"
    replication.write_text(json.dumps(sling_replication(file)))
    env = {**os.environ, **sling_cli_environment(work / "sling_home", url)}
    child = subprocess.run(
        [env["SLING_BINARY"], "run", "-r", str(replication)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if child.returncode:
        raise RuntimeError(child.stdout[-3000:])
    return int(re.search(r"inserted (\d+) rows", child.stdout).group(1))


def run_case(case: str, file: Path, url: str, work: Path) -> int:
    if case == "pipeline_duckdb":
        return run_pipeline(file, f"duckdb:///{work / 'pipeline.duckdb'}", work)
    if case == "rerun_duckdb":
        return run_pipeline(file, f"duckdb:///{work / 'pipeline.duckdb'}", work)
    if case == "checks_duckdb":
        spec = registry_spec()
        store = open_warehouse(f"duckdb:///{work / 'pipeline.duckdb'}")
        # As the main job runs them after a load: every check in one warehouse transaction.
        with store.transaction():
            for check in checks_for(spec):
                run_check(store, spec, check, file.name, "bench")
        return len(checks_for(spec))
    if case == "hash_only":
        with file.open("rb") as handle:
            return fingerprint(handle).size_bytes
    if case == "ctas_duckdb":
        return run_ctas(file, work)
    if case == "row_loop_postgres":
        return run_row_loop(file, url)
    if case == "pipeline_postgres":
        return run_pipeline(file, url, work)
    if case == "executemany_postgres":
        return run_executemany(file, url)
    if case == "dlt_merge_duckdb":
        return run_dlt_merge(file, f"duckdb:///{work / 'dlt.duckdb'}", work)
    if case == "dlt_merge_postgres":
        return run_dlt_merge(file, url, work)
    if case == "sling_postgres":
        return run_sling(file, url, work)
    raise ValueError(case)


def measure(case: str, cores: int, file: Path, url: str, work: Path) -> dict:
    """Runs one case in a child process pinned to `cores` cores; wall time and that child's own
    peak RSS (VmHWM, which, unlike getrusage, does not inherit the parent's high-water mark
    across fork and exec)."""
    if cores != ALL_CORES:
        work = work / f"cores_{cores}"
        work.mkdir(exist_ok=True)
    fresh_target(case, url, work)
    allowed = sorted(os.sched_getaffinity(0))[:cores]
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--case", case, "--file", str(file), "--work", str(work)],
        env={
            **os.environ,
            "HARMONIZER_BENCH_DB_URL": url,
            "POLARS_MAX_THREADS": str(cores),
            "HARMONIZER_THREADS": str(cores),
            **DLT_ENVIRONMENT,
        },
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, allowed),
    )
    assert child.stdout is not None
    output = json.loads(child.stdout.read())
    if child.wait() != 0:
        raise SystemExit(f"case {case} failed")
    seconds = time.perf_counter() - started
    return {
        "case": case,
        "cores": cores,
        "seconds": seconds,
        "rows": output["rows"],
        "peak_rss_mb": output["peak_rss_kb"] / 1024,
    }


def fresh_target(case: str, url: str, work: Path) -> None:
    """Empties what a loading case loads into, so each of its runs is a first load. The re-run
    and the checks keep what the pipeline loaded last."""
    if case == "pipeline_duckdb":
        shutil.rmtree(work / "staging", ignore_errors=True)
        for leftover in (work / "pipeline.duckdb", work / "pipeline.duckdb.wal"):
            leftover.unlink(missing_ok=True)
    if case.startswith("dlt_merge"):
        shutil.rmtree(work / "dlt", ignore_errors=True)
        (work / "dlt.duckdb").unlink(missing_ok=True)
    schemas = {
        "pipeline_postgres": ["harmonizer"],
        "dlt_merge_postgres": ["dlt_merge", "dlt_merge_staging"],
        "sling_postgres": ["sling"],
    }
    if case in schemas:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for schema in schemas[case]:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def seconds(result: dict) -> float:
    return result["seconds"]


def peak_rss_kb() -> int:
    """This process's high-water mark, or that of the largest program it ran (Sling's binary)."""
    status = Path("/proc/self/status").read_text()
    own = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def key(case: str, cores: int = ALL_CORES) -> str:
    return f"{case}@{cores}"


def print_targets(results: dict[str, dict], rows: int, data_dir: Path, one_core: int | None) -> None:
    """Each target the issue set, with its measured value, for the cases this run has."""
    r = results

    def speed(x: str, y: str) -> float:
        """How many times faster x ran than y."""
        return r[y]["seconds"] / r[x]["seconds"]

    def rate(x: str, y: str) -> float:
        """How many times more rows per second x loaded than y (they load different row counts)."""
        return r[x]["rows_per_s"] / r[y]["rows_per_s"]

    def show(
        label: str,
        needs: tuple[str, ...],
        value: Callable[[], float],
        unit: str,
        goal: str | None = None,
        limit: float = 0,
    ) -> None:
        """Prints the value, the goal (`goal` is a comparison: >=, >, <=, <) and whether it is met,
        when the run has every case of `needs`; a value alone without a goal."""
        if all(n in r for n in needs):
            measured = value()
            line = f"  {label:<52} {measured:>12,.2f} {unit:<6}"
            if goal:
                line += f" [{goal} {limit:,g}] {'ok' if COMPARISONS[goal](measured, limit) else 'MISSED'}"
            print(line)

    a, b, d = key("pipeline_duckdb"), key("ctas_duckdb"), key("pipeline_postgres")
    dd, dp, sp = key("dlt_merge_duckdb"), key("dlt_merge_postgres"), key("sling_postgres")
    c, e, f, h, checks = (
        key(n) for n in ("row_loop_postgres", "executemany_postgres", "rerun_duckdb", "hash_only", "checks_duckdb")
    )
    print("\ntargets:")
    show("(a) pipeline vs (b) bare DuckDB CTAS, speed", (a, b), lambda: speed(a, b), "x", ">=", 0.6)
    if one_core is not None:
        a1, b1 = key("pipeline_duckdb", one_core), key("ctas_duckdb", one_core)
        show(f"(a) vs (b) on {one_core} core(s), speed", (a1, b1), lambda: speed(a1, b1), "x", ">=", 0.5)
        show(f"(a) on {ALL_CORES} cores vs on {one_core}, speed", (a, a1), lambda: speed(a, a1), "x", ">=", 1.6)
    show("(a) pipeline vs dlt merge into DuckDB, speed", (a, dd), lambda: speed(a, dd), "x", ">=", 1.3)
    show("(d) pipeline vs dlt merge into PostgreSQL, speed", (d, dp), lambda: speed(d, dp), "x", ">=", 1.3)
    show("(d) pipeline vs Sling's CLI into PostgreSQL, speed", (d, sp), lambda: speed(d, sp), "x")
    show("(d) first load into PostgreSQL", (d,), lambda: r[d]["rows_per_s"], "rows/s", ">=", 100_000)
    show("(a) pipeline vs (c) row-by-row loader, rows/s", (a, c), lambda: rate(a, c), "x", ">=", 10)
    show("(d) pipeline vs (e) executemany upsert, rows/s", (d, e), lambda: rate(d, e), "x", ">=", 5)
    show("(f) unchanged re-run vs hashing alone, time", (f, h), lambda: 1 / speed(f, h), "x", "<=", 1.1)
    show("all checks vs (a), time", (checks, a), lambda: 1 / speed(checks, a), "x", "<=", 0.2)
    show("(a) peak RSS", (a,), lambda: r[a]["peak_rss_mb"], "MiB", "<", 1024)
    for other in sorted(data_dir.glob("results_*.json")):
        other_rows, kept = int(other.stem.split("_")[1]), json.loads(other.read_text()).get(a)
        if other_rows != rows and kept is not None and a in r:
            (small_rows, small), (large_rows, large) = sorted(
                [(other_rows, kept["peak_rss_mb"]), (rows, r[a]["peak_rss_mb"])]
            )
            show(
                f"(a) peak RSS at {large_rows:,} vs {small_rows:,} rows",
                (a,),
                lambda ratio=large / small: ratio,
                "x",
                "<=",
                1.5,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case; the median is kept")
    parser.add_argument("--only", help="comma-separated cases to run, e.g. pipeline_duckdb for a 10M-row memory check")
    parser.add_argument(
        "--threads",
        help=f"comma-separated core counts for (a) and (b), at most {ALL_CORES} (default: 1 and all; all with --only)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        rows = run_case(args.case, args.file, os.environ["HARMONIZER_BENCH_DB_URL"], args.work)
        print(json.dumps({"rows": rows, "peak_rss_kb": peak_rss_kb()}))
        return

    threads = args.threads or (str(ALL_CORES) if args.only else f"1,{ALL_CORES}")
    core_counts = sorted({min(int(n), ALL_CORES) for n in threads.split(",")}, reverse=True)
    file = registry_file(args.data_dir, args.rows)
    size_mb = file.stat().st_size / 2**20
    work = args.data_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    url = ""
    cases = ["pipeline_duckdb", "checks_duckdb", "ctas_duckdb", "hash_only", "rerun_duckdb", "dlt_merge_duckdb"]
    if not args.skip_postgres:
        url = recreated_database(DATABASE)
        cases += [
            "row_loop_postgres",
            "pipeline_postgres",
            "executemany_postgres",
            "dlt_merge_postgres",
            "sling_postgres",
        ]
    if args.only:
        cases = [c for c in cases if c in args.only.split(",")]
    runs = [(case, ALL_CORES) for case in cases]
    runs += [(case, n) for n in core_counts if n != ALL_CORES for case in SCALED_CASES if case in cases]

    print(f"{file.name}: {size_mb:.0f} MiB, {args.rows:,} generated rows (plus duplicates), {ALL_CORES} cores\n")
    print(f"{'case':<22} {'cores':>5} {'rows':>10} {'seconds':>9} {'rows/s':>10} {'peak RSS MiB':>13}")
    results = {}
    for case, cores in runs:
        repeated = sorted((measure(case, cores, file, url, work) for _ in range(args.repeat)), key=seconds)
        result = repeated[len(repeated) // 2]
        results[key(case, cores)] = result
        rows = result["rows"] if case not in ("hash_only", "rerun_duckdb", "checks_duckdb") else args.rows
        result["rows_per_s"] = rows / result["seconds"]
        print(
            f"{case:<22} {cores:>5} {rows:>10,} {result['seconds']:>9.2f} {result['rows_per_s']:>10,.0f} "
            f"{result['peak_rss_mb']:>13.0f}",
            flush=True,
        )
    kept = args.data_dir / f"results_{args.rows}.json"
    kept.write_text(json.dumps({**(json.loads(kept.read_text()) if kept.exists() else {}), **results}, indent=1))
    print_targets(results, args.rows, args.data_dir, min(core_counts) if min(core_counts) != ALL_CORES else None)

    if not args.skip_postgres:
        drop_databases(DATABASE)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
