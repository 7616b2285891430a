"""What history costs a small load: a 1,000-row file loaded into a warehouse that already holds
500 versions of its source and 5M issue rows, against the same load into a fresh warehouse.

    python benchmarks/history.py [--versions 500] [--issues 5000000] [--rows 1000] [--skip-postgres]

The history is written with bulk SQL (not 500 real loads): the registry rows of every version,
its source rows (--rows each), its check evaluations, and its issues, most of them in the last
version (the 2.5M duplicate keys of one bad file), the rest spread over the others, all in
publish order. Each load then runs in a process of its own, end to end as the main job runs
it: the four steps, every check in one transaction, the report. Every repeat loads another
file (history grows by one version a repeat). Prints seconds and peak RSS of each warehouse,
fresh and with history, and their ratios (target: at most 1.2x).
PostgreSQL: HARMONIZER_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
the benchmark creates and drops databases of its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pipeline import peak_rss_kb, registry_spec, run_pipeline
from scratch import drop_databases, recreated_database, run_load_case

from harmonizer_dagster.core.quality import checks_for, run_check
from harmonizer_dagster.core.report import quality_report
from harmonizer_dagster.core.samples import write_registry_csv
from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster.core.warehouse.tables import canonical_columns

ISSUES_PER_TRANSACTION = 500_000
DATABASES = {"fresh": "harmonizer_bench_fresh", "history": "harmonizer_bench_history"}


def _version(n: str, per: int, versions: int) -> str:
    """The version (1 to versions) of the n-th of `per` rows a version, as SQL both warehouses run."""
    return f"least(CAST((({n}) - mod({n}, {per})) / {per} AS BIGINT) + 1, {versions})"


def build_history(url: str, versions: int, issues: int, rows: int) -> None:
    spec = registry_spec()
    store = open_warehouse(url)
    store.migrate([spec])
    name = "'history_' || CAST(v AS VARCHAR) || '.csv'"
    with store.transaction():
        store.query(
            "INSERT INTO {schema}.sources (source_type, source_name, source_version, partition_key, file_name, "
            "file_uri, file_hash, file_size_bytes, status, records_in_file, records_processed, records_imported, "
            "records_failed, records_skipped, records_inserted, records_updated, records_unchanged, "
            "import_started_at, import_completed_at, published_at) "
            f"SELECT %s, %s, CAST(v AS VARCHAR), {name}, {name}, {name}, md5(CAST(v AS VARCHAR)), 100000, "
            "'completed', %s, %s, %s, 0, 0, %s, 0, 0, now(), now(), now() FROM generate_series(1, %s) AS g(v) "
            "ORDER BY v",
            (spec.name, spec.title, rows, rows, rows, rows, versions),
        )
        for check in checks_for(spec):
            store.query(
                "INSERT INTO {schema}.data_quality_checks (check_name, asset, partition_key, source_id, file_hash, "
                "severity, passed, observed_value, threshold, counts, message, run_id) "
                f"SELECT %s, %s, {name}, v, md5(CAST(v AS VARCHAR)), %s, TRUE, 0, 0, %s, 'history', 'history' "
                "FROM generate_series(1, %s) AS g(v)",
                (check.name, spec.name, check.severity, json.dumps({"null_rates": {}}), versions),
            )
        values = []
        for column, kind in canonical_columns(spec):
            if column in spec.natural_key:
                values.append("'H' || CAST(n AS VARCHAR)")
            elif column == "_file_hash":
                values.append("md5(CAST(v AS VARCHAR))")
            elif column == "_partition_key":
                values.append(name)
            elif column in ("source_line_number", "_arrival"):
                values.append("n" if column == "source_line_number" else "v")
            elif column == "_row_hash":
                values.append("CAST(md5(CAST(n AS VARCHAR)) AS UUID)")
            elif column == "_loaded_at":
                values.append("now()")
            elif kind == "VARCHAR":
                values.append("'value ' || CAST(mod(n, 977) AS VARCHAR)")
            else:
                values.append(f"CAST(NULL AS {kind})")
        columns = ", ".join(f'"{c}"' for c, _ in canonical_columns(spec))
        store.query(
            f"INSERT INTO {store.table(spec.name)} ({columns}) SELECT {', '.join(values)} FROM "
            f"(SELECT n, {_version('n', rows, versions)} AS v FROM generate_series(0, %s) AS g(n)) AS r",
            (versions * rows - 1,),
        )
    # Half the issues spread over every version but the last, which holds the other half: the
    # duplicate keys of one bad file. Written as loads wrote them, a transaction at a time.
    spread = issues // 2
    per = max(1, spread // max(versions - 1, 1))
    for first in range(0, issues, ISSUES_PER_TRANSACTION):
        store.query(
            "INSERT INTO {schema}.data_quality_issues (source_id, source_type, partition_key, file_hash, run_id, "
            "source_line_number, source_record_id, issue_type, severity, field_name, invalid_value, "
            "expected_format, rule) "
            f"SELECT v, %s, {name}, md5(CAST(v AS VARCHAR)), 'history', n, 'H' || CAST(n AS VARCHAR), "
            "CASE WHEN v = %s THEN 'duplicate_key' ELSE 'invalid_zip_code' END, 'warning', "
            "CASE WHEN v = %s THEN 'corp_number' ELSE 'home_office_zip' END, CAST(mod(n, 977) AS VARCHAR), "
            "'5 digits', CASE WHEN v = %s THEN 'natural_key' ELSE 'home_office_zip:0' END "
            f"FROM (SELECT n, CASE WHEN n < %s THEN {_version('n', per, versions - 1)} ELSE %s END AS v "
            "FROM generate_series(CAST(%s AS BIGINT), CAST(%s AS BIGINT)) AS g(n)) AS r",
            (
                spec.name,
                versions,
                versions,
                versions,
                spread,
                versions,
                first,
                min(first + ISSUES_PER_TRANSACTION, issues) - 1,
            ),
        )
    store.recount(list(range(1, versions + 1)))


def load_and_check(file: Path, url: str, work: Path) -> dict:
    """The main job's work on one file: the four steps, every check in one transaction, the report."""
    spec = registry_spec()
    store = open_warehouse(url)
    started = time.perf_counter()
    rows = run_pipeline(file, url, work)
    with store.transaction():
        for check in checks_for(spec):
            run_check(store, spec, check, file.name, "bench")
    quality_report(store, spec)
    return {"rows": rows, "seconds": time.perf_counter() - started, "peak_rss_kb": peak_rss_kb()}


def measure(file: Path, url: str, work: Path) -> dict:
    try:
        return run_load_case(__file__, file, url, work)
    except RuntimeError as exc:
        raise SystemExit(f"the load failed:\n{exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=500)
    parser.add_argument("--issues", type=int, default=5_000_000)
    parser.add_argument("--rows", type=int, default=1000, help="rows of each version, and of the file loaded")
    parser.add_argument("--repeat", type=int, default=3, help="loads of each case; the median is kept")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(load_and_check(args.file, args.url, args.work)))
        return

    folder = Path(tempfile.mkdtemp(prefix="history_bench_"))
    try:
        files = []
        for i in range(args.repeat):
            files.append(folder / f"registry_new_{i}.csv")
            write_registry_csv(files[-1], args.rows, seed=100 + i)
        backends = ["duckdb"] + ([] if args.skip_postgres else ["postgres"])
        print(
            f"a {args.rows:,}-row load, fresh vs after {args.versions} versions and {args.issues:,} issues "
            f"(median of {args.repeat})\n"
        )
        print(f"{'warehouse':<10} {'history':<8} {'build s':>8} {'load s':>8} {'peak RSS MiB':>13}")
        results: dict[tuple[str, str], dict] = {}
        for backend in backends:
            for state in ("fresh", "history"):
                runs = []
                built = 0.0
                for i, file in enumerate(files):
                    if state == "fresh" or i == 0:
                        if backend == "duckdb":
                            url = f"duckdb:///{folder / f'{state}.duckdb'}"
                            for leftover in (folder / f"{state}.duckdb", folder / f"{state}.duckdb.wal"):
                                leftover.unlink(missing_ok=True)
                        else:
                            url = recreated_database(DATABASES[state])
                        if state == "history":
                            started = time.perf_counter()
                            build_history(url, args.versions, args.issues, args.rows)
                            built = time.perf_counter() - started
                    shutil.rmtree(folder / "work", ignore_errors=True)
                    (folder / "work").mkdir()
                    runs.append(measure(file, url, folder / "work"))
                result = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
                result["peak_rss_mb"] = statistics.median(r["peak_rss_kb"] for r in runs) / 1024
                results[(backend, state)] = result
                print(
                    f"{backend:<10} {state:<8} {built:>8.1f} {result['seconds']:>8.2f} {result['peak_rss_mb']:>13.0f}",
                    flush=True,
                )
        print("\ntargets (history / fresh, at most 1.2x):")
        for backend in backends:
            fresh, history = results[(backend, "fresh")], results[(backend, "history")]
            for label, unit in (("seconds", "time"), ("peak_rss_mb", "peak RSS")):
                ratio = history[label] / fresh[label]
                print(f"  {backend:<10} {unit:<9} {ratio:>6.2f}x {'ok' if ratio <= 1.2 else 'MISSED'}")
    finally:
        if not args.skip_postgres:
            drop_databases(*DATABASES.values())
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
