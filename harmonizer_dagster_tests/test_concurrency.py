"""Several processes on one warehouse: concurrent loads of one source end as if loaded one
after another in arrival order, and readers wait for a load holding a DuckDB file instead of
failing. Locks are held by helper processes told when to let go: nothing waits for time."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl
import pytest
from starlette.testclient import TestClient

from harmonizer_dagster.core.samples import registry_rows
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse
from harmonizer_dagster.core.warehouse.base import WarehouseBusy
from harmonizer_dagster.core.warehouse.duckdb import DuckDBWarehouse
from harmonizer_dagster.web.app import Settings, create_app
from harmonizer_dagster_tests.conftest import SOURCES_DIR, drop_schemas, load_file

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"
HARMONIZER = str(Path(sys.executable).parent / "harmonizer")
# One load of one partition, through the asset's four steps; it says "ready" and "publishing"
# and waits for a line on stdin at each, so the test starts every load's steps, then every
# load's publish, at the same moment.
LOAD = """
import sys
from pathlib import Path
from harmonizer_dagster.core.spec import load_specs
from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster_tests.conftest import load_file
landing, staging, sources = map(Path, sys.argv[1:4])
spec = {s.name: s for s in load_specs(sources)}["business_registry"]
store = open_warehouse(sys.argv[4], sys.argv[5])
publish = store.publish
def publish_when_told(*args):
    print("publishing", flush=True)
    sys.stdin.readline()
    return publish(*args)
store.publish = publish_when_told
print("ready", flush=True)
sys.stdin.readline()
load_file(spec, landing, sys.argv[6], store, staging, run_id=sys.argv[6])
"""
# Holds the warehouse as a load would (the DuckDB file open; a PostgreSQL lock of the schema)
# until told to let go; prints its process id (the server process's on PostgreSQL).
HOLD = """
import os, sys
url, schema, name = sys.argv[1:4]
if url.startswith("duckdb://"):
    import duckdb
    connection = duckdb.connect(url.removeprefix("duckdb:///"))
    print(os.getpid(), flush=True)
else:
    import psycopg
    connection = psycopg.connect(url)
    connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))", (schema, name))
    print(connection.execute("SELECT pg_backend_pid()").fetchone()[0], flush=True)
sys.stdin.readline()
"""


def url_of(store: Warehouse) -> str:
    return f"duckdb:///{store.path}" if isinstance(store, DuckDBWarehouse) else store.url


@contextmanager
def a_fresh_one_beside(store: Warehouse, tmp_path: Path) -> Iterator[Warehouse]:
    """An empty warehouse of the same kind: another DuckDB file, or another schema (dropped after)."""
    if isinstance(store, DuckDBWarehouse):
        yield open_warehouse(f"duckdb:///{tmp_path / 'reference.duckdb'}")
        return
    fresh = open_warehouse(store.url, f"t_{uuid.uuid4().hex[:10]}")
    try:
        yield fresh
    finally:
        drop_schemas(fresh)


def write_versions(landing: Path, count: int) -> list[str]:
    """`count` quarterly files of 2,000 rows, each sharing half its keys with the next; every
    shared key has other values in each file, so which file wrote a row is plain to see."""
    names = []
    for version in range(count):
        frame, _ = registry_rows(version * 1_000, 2_000, seed=5, revision=version)
        frame = frame.with_columns(
            pl.when(pl.col("Legal Name") != "")
            .then(pl.col("Legal Name") + f" Rev{version}")
            .otherwise(pl.col("Legal Name"))
        )
        name = f"registry_2027-Q{version + 1}.csv"
        path = landing / SOURCE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_csv(path)
        names.append(name)
    return names


def outcome(store: Warehouse) -> dict:
    """What loads leave behind, comparable across warehouses (source ids aside)."""
    return {
        "rows": store.query(
            "SELECT corp_number, legal_name, CAST(_row_hash AS VARCHAR), _partition_key, _file_hash "
            "FROM {schema}.business_registry ORDER BY corp_number"
        ),
        "issues": store.query(
            "SELECT partition_key, source_line_number, issue_type, field_name, severity, invalid_value "
            "FROM {schema}.data_quality_issues ORDER BY 1, 2, 3, 4, 5, 6"
        ),
        "failed": store.query(
            "SELECT partition_key, source_line_number, error_type FROM {schema}.failed_records ORDER BY 1, 2, 3"
        ),
        "sources": store.query(
            "SELECT partition_key, status, records_in_file, records_imported, records_failed, records_skipped "
            "FROM {schema}.sources ORDER BY source_id"
        ),
        "inserted": store.query("SELECT sum(records_inserted) FROM {schema}.sources")[0][0],
    }


def say(process: subprocess.Popen, line: str = "go") -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def expect(process: subprocess.Popen, line: str) -> str:
    assert process.stdout is not None
    got = process.stdout.readline().strip()
    assert got.startswith(line), f"expected {line!r}, got {got!r}: {process.stderr.read() if process.stderr else ''}"
    return got


@pytest.fixture
def holder() -> Iterator:
    """Starts processes holding a warehouse as a load would, until the test ends; yields the
    function starting one, which returns the process and the id a waiting session names."""
    started: list[subprocess.Popen] = []

    def hold(store: Warehouse, name: str = f"publish {SOURCE}") -> tuple[subprocess.Popen, int]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD, url_of(store), store.schema_name, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process, int(expect(process, ""))

    yield hold
    for process in started:
        release(process)


def release(process: subprocess.Popen) -> None:
    if process.poll() is None:
        say(process, "release")
        process.wait(30)


def test_concurrent_loads_of_one_source_end_as_loaded_one_after_another_in_arrival_order(warehouse, specs, tmp_path):
    landing = tmp_path / "landing"
    partitions = write_versions(landing, 3)
    argv = [str(landing), str(tmp_path / "staging"), str(SOURCES_DIR), url_of(warehouse), warehouse.schema_name]
    loads = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD, *argv, partition],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for partition in partitions
    ]
    # An empty warehouse: all three migrate, register, then publish at once.
    for step in ("ready", "publishing"):
        for load in loads:
            expect(load, step)
        for load in loads:
            say(load)
    for load in loads:
        _, errors = load.communicate(timeout=120)
        assert load.returncode == 0, errors[-3000:]

    # Arrival is the order the registry recorded them in.
    arrived = [key for (key,) in warehouse.query("SELECT partition_key FROM {schema}.sources ORDER BY source_id")]
    assert sorted(arrived) == sorted(partitions), "one registry entry per version"
    with a_fresh_one_beside(warehouse, tmp_path) as reference:
        for partition in arrived:
            load_file(specs[SOURCE], landing, partition, reference, tmp_path / "reference-staging")
        expected = outcome(reference)
    result = outcome(warehouse)
    assert result == expected
    keys = [row[0] for row in result["rows"]]
    assert len(keys) == len(set(keys)) > 3_000, "one row per key"
    assert result["inserted"] == len(keys), "each key inserted once, by the first publish that held it"
    assert [status for _, status, *_ in result["sources"]] == ["completed"] * 3


def test_a_load_waits_while_another_process_holds_the_warehouse_then_completes(warehouse, specs, landing, holder):
    held, pid = holder(warehouse)
    told = threading.Event()
    messages: list[str] = []
    warehouse.on_wait = lambda message: (messages.append(message), told.set())
    finished: list[object] = []
    load = threading.Thread(
        target=lambda: finished.append(load_file(specs[SOURCE], landing, Q3, warehouse, landing.parent / "s"))
    )
    load.start()
    assert told.wait(60), "the load says it waits"
    assert not finished
    release(held)
    load.join(120)
    assert finished and finished[0].records_imported > 0
    assert warehouse.partition_counts(SOURCE, Q3)["records_imported"] == finished[0].records_imported
    assert len(messages) == 1 and messages[0].startswith("waiting for the warehouse: ")
    assert str(pid) in messages[0] and "HARMONIZER_WAREHOUSE_LOCK_TIMEOUT" in messages[0]
    if isinstance(warehouse, DuckDBWarehouse):
        assert str(warehouse.path.resolve()) in messages[0]
    else:
        assert f"publish {SOURCE} lock of schema {warehouse.schema_name}" in messages[0]


def test_a_session_gives_up_after_the_lock_timeout_naming_the_holder(warehouse, holder, monkeypatch):
    warehouse.migrate([])
    _, pid = holder(warehouse)
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_LOCK_TIMEOUT", "0.2")
    with pytest.raises(WarehouseBusy) as busy, warehouse.session() as s:
        warehouse.hold(s, f"publish {SOURCE}")
    assert str(pid) in str(busy.value) and "after 0.2 s" in str(busy.value)
    assert "raise HARMONIZER_WAREHOUSE_LOCK_TIMEOUT" in str(busy.value)


@pytest.fixture
def loaded_duckdb(specs, landing, tmp_path) -> DuckDBWarehouse:
    store = open_warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    store.migrate(list(specs.values()))
    load_file(specs[SOURCE], landing, Q3, store, tmp_path / "s")
    return store


def test_a_summary_started_while_a_load_holds_the_duckdb_file_waits_then_succeeds(loaded_duckdb, holder):
    held, pid = holder(loaded_duckdb)
    summary = subprocess.Popen(
        [HARMONIZER, "summary"],
        env={**os.environ, "HARMONIZER_WAREHOUSE_URL": f"duckdb:///{loaded_duckdb.path}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert summary.stderr is not None
    waiting = summary.stderr.readline()
    assert waiting.startswith("waiting for the warehouse: ") and str(pid) in waiting
    assert summary.poll() is None, "it waits"
    release(held)
    out, err = summary.communicate(timeout=60)
    assert summary.returncode == 0, err
    assert err == "", "the wait is said once"
    rows = loaded_duckdb.query(f"SELECT count(*) FROM {{schema}}.{SOURCE}")[0][0]
    assert re.search(rf"{SOURCE} +{re.escape(Q3)} +completed", out) and f"harmonizer.{SOURCE}: {rows} rows" in out


def test_the_triage_page_waits_for_a_load_holding_the_duckdb_file(loaded_duckdb, holder, tmp_path):
    app = TestClient(
        create_app(Settings(warehouse_url=url_of(loaded_duckdb), staging_dir=tmp_path / "staging"), loaded_duckdb)
    )
    held, pid = holder(loaded_duckdb)
    told = threading.Event()
    logged: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())
            told.set()

    logger = logging.getLogger("harmonizer_dagster.core.warehouse.base")
    logger.addHandler(seen := Seen(logging.WARNING))
    try:
        pages: list = []
        request = threading.Thread(target=lambda: pages.append(app.get("/")))
        request.start()
        assert told.wait(60), "the page logs that it waits"
        release(held)
        request.join(60)
    finally:
        logger.removeHandler(seen)
    assert logged[0].startswith("waiting for the warehouse: ") and str(pid) in logged[0]
    assert pages[0].status_code == 200 and Q3 in pages[0].text


def test_a_run_keeping_the_duckdb_file_open_gives_a_waiting_process_its_turn(loaded_duckdb):
    stop, sessions = threading.Event(), []

    def run() -> None:
        with loaded_duckdb.kept_open():
            while not stop.is_set():
                sessions.append(loaded_duckdb.query("SELECT count(*) FROM {schema}.sources")[0][0])

    keeper = threading.Thread(target=run)
    keeper.start()
    try:
        while not sessions:
            threading.Event().wait(0.01)
        summary = subprocess.run(
            [HARMONIZER, "summary"],
            env={**os.environ, "HARMONIZER_WAREHOUSE_URL": f"duckdb:///{loaded_duckdb.path}"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        during = len(sessions)
        threading.Event().wait(0.3)
        assert len(sessions) > during, "the run goes on once the summary had its turn"
    finally:
        stop.set()
        keeper.join(60)
    assert summary.returncode == 0, summary.stderr
    assert re.search(rf"{SOURCE} +{re.escape(Q3)} +completed", summary.stdout)
    assert summary.stderr.startswith("waiting for the warehouse: "), "it found the file held by the run"
    assert not loaded_duckdb.path.with_name(loaded_duckdb.path.name + ".wanted").exists()


def test_a_duckdb_file_another_process_is_creating_is_waited_for_and_a_broken_one_is_not(tmp_path):
    """Several processes opening a new warehouse at once: one may find the file before DuckDB
    wrote its header. A young, headerless file is waited for; an old broken one fails at once."""
    path = tmp_path / "new.duckdb"
    path.write_bytes(b"\0" * 100)  # what a reader may see while another process creates it
    creator = threading.Timer(0.5, path.unlink)
    creator.start()
    store = open_warehouse(f"duckdb:///{path}")
    assert store.query("SELECT 42") == [(42,)]
    creator.join()

    broken = tmp_path / "broken.duckdb"
    broken.write_bytes(b"not a database" * 2000)
    os.utime(broken, (time.time() - 3600, time.time() - 3600))
    started = time.monotonic()
    with pytest.raises(duckdb.IOException, match="not a valid DuckDB database file"):
        open_warehouse(f"duckdb:///{broken}").query("SELECT 1")
    assert time.monotonic() - started < 2
