"""What the benchmarks share: scratch PostgreSQL databases, the generated registry file, and a
case run in a child process so its peak memory is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The server benchmarks create their databases on (trust auth on loopback by default).
ADMIN_URL = os.environ.get("HARMONIZER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def recreated_database(name: str) -> str:
    """An empty database `name` on the benchmark server (dropped first if a run left it); its URL."""
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_databases(*names: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """An empty database for the block, dropped afterwards; yields its URL."""
    url = recreated_database(name)
    try:
        yield url
    finally:
        drop_databases(name)


def run_load_case(script: str, file: Path, url: str, work: Path) -> dict:
    """Runs `script --case load` on one file into one warehouse in a child process; the JSON it
    printed last. Raises RuntimeError with the child's error output when it failed."""
    child = subprocess.run(
        [sys.executable, script, "--case", "load", "--file", str(file), "--url", url, "--work", str(work)],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode:
        raise RuntimeError(child.stderr[-3000:])
    return json.loads(child.stdout.splitlines()[-1])


def registry_file(data_dir: Path, rows: int) -> Path:
    """The registry file of `rows` generated rows plus duplicates (1,000,000 make 1,006,000
    records, 139 MiB), written on first use and kept in `data_dir`."""
    file = (data_dir / f"registry_{rows}.csv").resolve()
    if not file.exists():
        # In a child process: a parent that grew while generating would pass its high-water
        # mark on to every case it starts (Linux keeps it across fork and exec).
        print(f"generating {file} ...", flush=True)
        generate = "import sys, pathlib; from harmonizer_dagster.core.samples import write_registry_csv as w; "
        generate += "w(pathlib.Path(sys.argv[1]), int(sys.argv[2]), seed=42)"
        subprocess.run([sys.executable, "-c", generate, str(file), str(rows)], check=True)
    return file
