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

from harmonizer_dagster_tests.fleet import wait_for
from harmonizer_dagster_tests.test_faults import hold_duckdb_lock
from harmonizer_dagster_tests.test_sensors import drop_small_files

REPO = Path(__file__).parent.parent
ARTIFACTS = REPO / "test-artifacts"
SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"


@pytest.fixture
def daemon(daemon_env, start_daemon):
    start_daemon(daemon_env)
    yield Path(daemon_env["HARMONIZER_LANDING_DIR"]), Path(daemon_env["DAGSTER_HOME"]), warehouse_file(daemon_env)


def warehouse_file(env: dict[str, str]) -> Path:
    return Path(env["HARMONIZER_WAREHOUSE_URL"].removeprefix("duckdb:///"))


def runs(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [r for r in instance.get_runs() if r.job_name == f"load_{SOURCE}_files"]


def test_dropped_file_becomes_rows_and_the_same_bytes_again_do_nothing(daemon, landing):
    drop, home, warehouse = daemon
    dropped_at = time.time()
    shutil.copy(landing / SOURCE / Q3, drop / SOURCE / Q3)

    done = wait_for(lambda: [r for r in runs(home) if r.status == dg.DagsterRunStatus.SUCCESS], 120, "the sensor's run")
    latency = time.time() - dropped_at
    assert done[0].run_config["ops"][f"{SOURCE}_files_to_load"]["config"]["partition_keys"] == [Q3]
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


def retried_steps(home: Path, run_id: str) -> bool:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return bool(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY))


# Clocks shortened so the test does not wait for minutes.
@pytest.mark.parametrize(
    "instance_settings",
    [{"run_monitoring": {"poll_interval_seconds": 2}, "run_launcher": {"config": {"unreachable_timeout_seconds": 5}}}],
)
def test_a_run_killed_with_its_daemon_is_failed_by_run_monitoring_and_retried_on_the_embedded_instance(
    daemon_env, start_daemon, landing
):
    drop, home = Path(daemon_env["HARMONIZER_LANDING_DIR"]), Path(daemon_env["DAGSTER_HOME"])
    warehouse = warehouse_file(daemon_env)
    first_daemon = start_daemon(daemon_env)
    # Another process holds the DuckDB file: the load waits in its hash step's retries, so the
    # run worker is surely alive when it is killed.
    holder = hold_duckdb_lock(warehouse)
    shutil.copy(landing / SOURCE / Q3, drop / SOURCE / Q3)
    (first,) = wait_for(lambda: [r for r in runs(home) if retried_steps(home, r.run_id)], 120, "a retried step")
    # As when `dagster dev` is killed: the daemon, its code server and the run worker die at once,
    # and nothing is left to say that the run ended.
    os.killpg(first_daemon.pid, signal.SIGKILL)
    first_daemon.wait()
    holder.stdin.close()
    holder.wait()
    assert next(r for r in runs(home) if r.run_id == first.run_id).status == dg.DagsterRunStatus.STARTED
    start_daemon(daemon_env)

    def finished(run_id: str) -> dg.DagsterRun | None:
        run = next(r for r in runs(home) if r.run_id == run_id)
        return run if run.is_finished else None

    failed = wait_for(lambda: finished(first.run_id), 120, "run monitoring to fail the killed run")
    assert failed.status == dg.DagsterRunStatus.FAILURE
    with dg.DagsterInstance.from_config(str(home)) as instance:
        messages = [entry.message for entry in instance.all_logs(first.run_id)]
    assert any("its run worker is lost" in m for m in messages), messages[-5:]

    retry = wait_for(
        lambda: [r for r in runs(home) if r.parent_run_id == first.run_id and r.status == dg.DagsterRunStatus.SUCCESS],
        180,
        "the daemon's retry to succeed",
    )
    # The retry loads the files the killed run was given.
    assert retry[0].run_config == first.run_config and Q3 in str(first.run_config)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM harmonizer.{SOURCE}").fetchone() == (988,)
        assert con.execute("SELECT status, records_imported FROM harmonizer.sources").fetchall() == [("completed", 988)]


@pytest.mark.parametrize("instance_settings", [{"run_monitoring": {"poll_interval_seconds": 2}}])
def test_a_killed_dagster_asset_materialize_is_failed_by_run_monitoring(daemon_env, start_daemon, landing):
    drop, home = Path(daemon_env["HARMONIZER_LANDING_DIR"]), Path(daemon_env["DAGSTER_HOME"])
    warehouse = warehouse_file(daemon_env)
    # No landing sensor: the only run is the one started from the command line.
    start_daemon({**daemon_env, "HARMONIZER_AUTOMATION": "off"})
    shutil.copy(landing / SOURCE / Q3, drop / SOURCE / Q3)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(f"{SOURCE}_files", [Q3])
    holder = hold_duckdb_lock(warehouse)
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "harmonizer_dagster"]
    cli = subprocess.Popen(
        [*command, "--select", f"{SOURCE},{SOURCE}_published", "--partition", Q3],
        env=daemon_env,
        cwd=home.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (first,) = wait_for(lambda: [r for r in all_runs(home) if retried_steps(home, r.run_id)], 120, "a retried step")
    os.killpg(cli.pid, signal.SIGKILL)
    cli.wait()
    holder.stdin.close()
    holder.wait()

    failed = wait_for(
        lambda: [r for r in all_runs(home) if r.run_id == first.run_id and r.is_finished], 120, "the run to end"
    )
    assert failed[0].status == dg.DagsterRunStatus.FAILURE
    with dg.DagsterInstance.from_config(str(home)) as instance:
        messages = [entry.message for entry in instance.all_logs(first.run_id)]
    assert any("has exited without ending it: the run worker is lost" in m for m in messages), messages[-5:]
    # A run started from the command line has no code location the daemon could re-execute it
    # from: the same command, run again, loads the file.
    again = [*command, "--select", f"{SOURCE},{SOURCE}_published", "--partition", Q3]
    subprocess.run(again, env=daemon_env, cwd=home.parent, check=True)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM harmonizer.{SOURCE}").fetchone() == (988,)


def all_runs(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs())
