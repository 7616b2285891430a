"""End to end with the real daemon: drop a file, and rows reach the warehouse with no human action."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from harmonizer_dagster_tests.test_sensors import drop_small_files

REPO = Path(__file__).parent.parent
ARTIFACTS = REPO / "test-artifacts"
SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def daemon(tmp_path, landing):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    # Create the SQLite storages before the daemon starts: the test reads them while it runs,
    # and two processes creating one at once can both stamp its schema version.
    with dg.DagsterInstance.from_config(str(home)):
        pass
    drop = tmp_path / "drop"
    (drop / SOURCE).mkdir(parents=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HARMONIZER_LANDING_DIR": str(drop),
        "HARMONIZER_STAGING_DIR": str(tmp_path / "staging"),
        "HARMONIZER_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
    }
    log = (tmp_path / "daemon.log").open("w")
    # Its own process group: the daemon, its code server and run workers are stopped together,
    # and nothing else on the machine is touched.
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield drop, home, tmp_path / "warehouse.duckdb"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


def runs(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [r for r in instance.get_runs() if r.job_name == f"load_{SOURCE}_files"]


def test_dropped_file_becomes_rows_and_the_same_bytes_again_do_nothing(daemon, landing):
    drop, home, warehouse = daemon
    dropped_at = time.time()
    shutil.copy(landing / SOURCE / Q3, drop / SOURCE / Q3)

    done = wait_for(lambda: [r for r in runs(home) if r.status == dg.DagsterRunStatus.SUCCESS], 120, "the sensor's run")
    latency = time.time() - dropped_at
    assert done[0].run_config["ops"][f"{SOURCE}_discover"]["config"]["partition_keys"] == [Q3]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM harmonizer.{SOURCE}").fetchone() == (988,)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "drop_to_rows_latency.txt").write_text(f"{latency:.1f} s from file drop to rows in the warehouse\n")
    print(f"drop to rows: {latency:.1f}s")

    shutil.copy(landing / SOURCE / Q3, drop / SOURCE / "same bytes, new name.csv")
    ticks_before = sensor_ticks(home)
    wait_for(lambda: sensor_ticks(home) >= ticks_before + 3, 60, "three more sensor ticks")
    assert len(runs(home)) == 1, "the same bytes under another name start no second run"

    # Files dropped at once share runs: each is its own partition, with its own materialization.
    names = drop_small_files(drop / SOURCE, 6)
    wait_for(
        lambda: len(runs(home)) > 1 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs(home)),
        120,
        "the runs of the dropped files",
    )
    assert len(runs(home)) <= 3, "six files take one run, two when a tick saw them half copied"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        loaded = con.execute("SELECT partition_key FROM harmonizer.sources WHERE status = 'completed'").fetchall()
    assert set(names) <= {key for (key,) in loaded}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for name in names:
            assert instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(SOURCE), asset_partitions=[name]), limit=1
            ).records


def sensor_ticks(home: Path) -> int:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        state = next(s for s in instance.all_instigator_state() if s.name == f"{SOURCE}_landing_sensor")
        return len(instance.get_ticks(state.instigator_origin_id, state.selector_id))
