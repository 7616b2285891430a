"""Backup and restore: the restore drill on both warehouses (load, back up, load more, restore,
load the later file again: the warehouse equals loading everything once), and the CLI."""

import os
import shutil
import subprocess
import sys

import pytest

from harmonizer_dagster.core.backup import BackupError, backup, prune, read_manifest, restore
from harmonizer_dagster.core.settings import SAMPLES_DIR
from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster_tests.conftest import drop_schemas, load_file, warehouse_url

FIRST, LATER = "registry_2026-Q3.csv", "registry_2026-Q4.csv.gz"


def landed(tmp_path):
    folder = tmp_path / "landing" / "business_registry"
    folder.mkdir(parents=True)
    for name in (FIRST, LATER):
        shutil.copy(SAMPLES_DIR / "business_registry" / name, folder / name)
    return tmp_path / "landing"


def contents(store, spec) -> tuple[list, list]:
    """The consumer table and the registry, without what differs between two loads of the same
    files (load times, run ids, generated ids)."""
    names = ", ".join(c.name for c in spec.columns)
    rows = store.query(f"SELECT {names}, _partition_key, _row_hash FROM {store.table(spec.name)} ORDER BY 1")
    registry = store.query(
        "SELECT partition_key, status, records_in_file, records_imported, records_failed, records_inserted, "
        "records_updated FROM {schema}.sources ORDER BY partition_key, source_id"
    )
    return rows, registry


@pytest.mark.parametrize("kind", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_restore_drill_gives_the_warehouse_of_loading_everything_once(kind, specs, tmp_path, request):
    spec = specs["business_registry"]
    landing = landed(tmp_path)
    store = open_warehouse(warehouse_url(kind, tmp_path, request), f"drill_{kind}")
    reference = open_warehouse(warehouse_url(kind, tmp_path / "reference", request), f"once_{kind}")
    try:
        load_file(spec, landing, FIRST, store, tmp_path / "staging")
        manifest = backup(store, tmp_path / "backup")
        assert manifest.warehouse == ("duckdb" if kind == "duckdb" else "postgresql")
        load_file(spec, landing, LATER, store, tmp_path / "staging")
        restore(store, tmp_path / "backup")
        assert store.query("SELECT DISTINCT partition_key FROM {schema}.sources") == [(FIRST,)], (
            "the later load is gone"
        )
        load_file(spec, landing, LATER, store, tmp_path / "staging", run_id="again")
        for name in (FIRST, LATER):
            load_file(spec, landing, name, reference, tmp_path / "staging-once")
        assert contents(store, spec) == contents(reference, spec)
    finally:
        if kind == "postgres":
            drop_schemas(store)
            drop_schemas(reference)


def test_a_backup_goes_into_a_new_folder_and_a_restore_needs_one(specs, tmp_path):
    store = open_warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    store.migrate([specs["business_registry"]])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "something").write_text("x")
    with pytest.raises(BackupError, match="is not empty"):
        backup(store, tmp_path / "used")
    with pytest.raises(BackupError, match="is no backup of this platform"):
        restore(store, tmp_path / "used")
    for stamp in ("2026-12-01T03:17:00Z", "2026-12-02T03:17:00Z", "2026-12-03T03:17:00Z"):
        backup(store, tmp_path / "backups" / stamp)
    assert [p.name for p in prune(tmp_path / "backups", keep=2)] == ["2026-12-01T03:17:00Z"]
    assert read_manifest(tmp_path / "backups" / "2026-12-03T03:17:00Z").schemas == ["harmonizer", "harmonizer_stage"]


def test_the_cli_backs_up_and_restores_a_duckdb_warehouse(specs, tmp_path):
    spec = specs["business_registry"]
    landing = landed(tmp_path)
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    load_file(spec, landing, FIRST, open_warehouse(url), tmp_path / "staging")
    env = {**os.environ, "HARMONIZER_WAREHOUSE_URL": url}
    cli = [sys.executable, "-m", "harmonizer_dagster.cli"]
    done = subprocess.run([*cli, "backup", str(tmp_path / "b")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"backed up the duckdb warehouse to {tmp_path / 'b'}"
    load_file(spec, landing, LATER, open_warehouse(url), tmp_path / "staging")
    done = subprocess.run([*cli, "restore", str(tmp_path / "b")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert open_warehouse(url).query("SELECT DISTINCT partition_key FROM {schema}.sources") == [(FIRST,)]
    done = subprocess.run([*cli, "backup", str(tmp_path / "c"), "--instance"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "DAGSTER_PG_" in done.stderr


def test_the_scheduled_backup_job_writes_a_backup_and_keeps_the_newest(specs, tmp_path):
    import dagster as dg

    from harmonizer_dagster.orchestration.housekeeping import backup_warehouse, build_backup_schedule
    from harmonizer_dagster.orchestration.resources import WarehouseResource

    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    load_file(specs["business_registry"], landed(tmp_path), FIRST, open_warehouse(url), tmp_path / "staging")
    schedule = build_backup_schedule(str(tmp_path / "backups"), dg.DefaultScheduleStatus.RUNNING)
    run_config = schedule.evaluate_tick(dg.build_schedule_context()).run_requests[0].run_config
    run_config["ops"]["back_up"]["config"]["keep"] = 1
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for _ in range(2):
            result = backup_warehouse.execute_in_process(
                run_config=run_config, instance=instance, resources={"warehouse": WarehouseResource(url=url)}
            )
            assert result.success
    [kept] = list((tmp_path / "backups").iterdir())
    copy = open_warehouse(f"duckdb:///{kept / 'warehouse.duckdb'}")
    assert copy.query("SELECT partition_key, status FROM {schema}.sources") == [(FIRST, "completed")]
