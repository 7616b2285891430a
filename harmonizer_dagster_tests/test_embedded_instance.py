"""The embedded instance keeps its event log's connections, and stays Dagster's SQLite instance."""

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from harmonizer_dagster.orchestration.embedded_instance import (
    KEPT_FILES,
    EmbeddedInstance,
    KeptConnectionsEventLogStorage,
)

REPO = Path(__file__).parent.parent

# Another process reports a materialization of `elsewhere` to the same instance.
REPORT = """
import dagster as dg
with dg.DagsterInstance.get() as instance:
    instance.report_runless_asset_event(dg.AssetMaterialization("elsewhere", metadata={"by": "other"}))
"""


@dg.op
def write(context: dg.OpExecutionContext) -> None:
    context.log_event(dg.AssetMaterialization("here", metadata={"run": context.run_id}))


@dg.job
def writes() -> None:
    write()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def open_database_files() -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor, closed since
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [link for link in links if link.endswith(".db")]


def test_runs_and_other_processes_events_are_read_where_dagsters_own_storage_reads_them(home, monkeypatch):
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance, EmbeddedInstance)
        assert isinstance(instance.event_log_storage, KeptConnectionsEventLogStorage)
        run = writes.execute_in_process(instance=instance)
        assert instance.get_latest_materialization_event(dg.AssetKey("here")).run_id == run.run_id
        # This process keeps its connection to the index; the other process's write is seen.
        subprocess.run([sys.executable, "-c", REPORT], check=True, timeout=120)
        seen = instance.get_latest_materialization_event(dg.AssetKey("elsewhere"))
        assert seen is not None and seen.asset_materialization.metadata["by"].value == "other"
        stored = instance.all_logs(run.run_id)

    # Loaded from its folder by a process whose DAGSTER_HOME is elsewhere, it is the same instance.
    monkeypatch.setenv("DAGSTER_HOME", str(home.parent / "elsewhere"))
    with dg.DagsterInstance.from_config(str(home)) as again:
        assert [e.timestamp for e in again.all_logs(run.run_id)] == [e.timestamp for e in stored]
        assert again.get_latest_materialization_event(dg.AssetKey("elsewhere")) is not None
    # Dagster's own storage, on the same folder, reads the same history.
    dagsters = SqliteEventLogStorage(str(home / "history" / "runs"))
    assert [entry.timestamp for entry in dagsters.get_logs_for_run(run.run_id)] == [e.timestamp for e in stored]
    assert (home / "history" / "runs" / f"{run.run_id}.db").exists()


def test_a_process_keeps_a_bounded_number_of_database_files_open(home):
    before = len(open_database_files())
    with dg.DagsterInstance.get() as instance:
        runs = [writes.execute_in_process(instance=instance).run_id for _ in range(KEPT_FILES + 4)]
        assert len(open_database_files()) - before <= KEPT_FILES + 2, "the index, runs.db, and a few run files"
        instance.wipe()
        again = writes.execute_in_process(instance=instance)
        assert instance.get_latest_materialization_event(dg.AssetKey("here")).run_id == again.run_id
        assert not instance.all_logs(runs[0]), "wiped"
    assert len(open_database_files()) == before, "all closed with the instance"
