"""A step killed mid-file resumes from its last checkpointed batch instead of starting over."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import psycopg
import pytest

from harmonizer_dagster.core.files import locate
from harmonizer_dagster.core.pipeline import deduplicate_step, hash_step, validate_step
from harmonizer_dagster.core.samples import write_registry_csv
from harmonizer_dagster.core.staging import StepStage
from harmonizer_dagster.core.warehouse import open_warehouse, postgres
from harmonizer_dagster.core.warehouse.postgres import LOAD_TABLE_PREFIX, PostgresWarehouse
from harmonizer_dagster_tests.conftest import SOURCES_DIR, write_audit_publish

BATCH_ROWS = 500
WORKER = """
import sys
from pathlib import Path
from harmonizer_dagster.core.files import locate
from harmonizer_dagster.core.pipeline import hash_step, validate_step
from harmonizer_dagster.core.spec import load_specs
from harmonizer_dagster.core.warehouse import open_warehouse
landing, staging, sources = map(Path, sys.argv[1:4])
spec = {s.name: s for s in load_specs(sources)}["business_registry"]
store = open_warehouse(sys.argv[4])
store.migrate([spec])
hashed = hash_step(spec, locate(landing, spec.name, "big.csv"), store, staging, "killed-run")
validate_step(spec, hashed, batch_rows=int(sys.argv[5]))
"""


def markers(stage: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in stage.rglob("batch-*.done")}


def test_killed_validate_resumes_from_its_last_batch(specs, tmp_path):
    spec = specs["business_registry"]
    landing = tmp_path / "landing"
    expected = write_registry_csv(landing / spec.name / "big.csv", 40_000, seed=5)
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    staging = tmp_path / "staging"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(landing), str(staging), str(SOURCES_DIR), url, str(BATCH_ROWS)],
        start_new_session=True,
    )
    deadline = time.time() + 120
    while len(markers(staging)) < 8:
        assert worker.poll() is None, "the worker ended before it could be killed"
        assert time.time() < deadline, "no batches were checkpointed"
        time.sleep(0.02)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    before = markers(staging)
    assert 8 <= len(before) < 40_000 // BATCH_ROWS, "killed mid-file"

    store = open_warehouse(url)
    hashed = hash_step(spec, locate(landing, spec.name, "big.csv"), store, staging, "resumed-run")
    summary = validate_step(spec, hashed, batch_rows=BATCH_ROWS)

    after = markers(staging)
    assert {k: after[k] for k in before} == before, "checkpointed batches were not redone"
    assert summary["records_failed"] == expected["records_failed"]
    assert summary["records_parsed"] == expected["records_in_file"]
    deduplicate_step(spec, hashed)
    result = write_audit_publish(spec, hashed, store, "resumed-run")
    assert result.records_imported == expected["records_imported"]
    assert result.records_skipped == expected["records_skipped"]
    assert not Path(hashed.stage_dir).exists(), "staging is cleaned up after success"


def test_interrupted_batch_leftovers_are_discarded(tmp_path):
    stage = StepStage(tmp_path / "validate")
    stage.prepare()
    stage.write_files(0, {"accepted": pl.DataFrame({"a": [1]})})
    stage.mark(0)
    # Batch 1 died after writing one of its files but before its marker.
    pl.DataFrame({"a": [2]}).write_parquet(tmp_path / "validate" / "accepted-000001.parquet")
    (tmp_path / "validate" / "issues-000001.parquet.tmp").write_text("partial")
    assert stage.prepare() == 1
    assert [p.name for p in stage.files("accepted")] == ["accepted-000000.parquet"]
    assert not list((tmp_path / "validate").glob("*.tmp"))


def test_an_upsert_repeated_after_another_run_published_the_file_changes_nothing(specs, landing, tmp_path):
    """Re-executing a failed run from failure after its automatic retry already loaded the file."""
    spec = specs["news_articles"]
    store = open_warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    store.migrate([spec])
    hashed = hash_step(spec, locate(landing, spec.name, "news_2026-11-20.json"), store, tmp_path / "staging", "a")
    validate_step(spec, hashed)
    deduplicate_step(spec, hashed)
    first = write_audit_publish(spec, hashed, store, "retry")
    again = write_audit_publish(spec, hashed, store, "re-execution")
    assert (again.records_imported, again.table_rows) == (first.records_imported, first.table_rows) != (0, 0)
    assert store.query("SELECT count(*) FROM {schema}.sources")[0][0] == 1


def test_an_upsert_without_staged_outputs_or_a_published_version_fails_clearly(specs, landing, tmp_path):
    spec = specs["news_articles"]
    store = open_warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    store.migrate([spec])
    hashed = hash_step(spec, locate(landing, spec.name, "news_2026-11-20.json"), store, tmp_path / "staging", "a")
    with pytest.raises(RuntimeError, match="staged outputs are missing"):
        write_audit_publish(spec, hashed, store, "a")
    assert store.query("SELECT count(*) FROM {schema}.news_articles")[0][0] == 0


FULL_LOAD = """
import sys
from pathlib import Path
from harmonizer_dagster.core.files import locate
from harmonizer_dagster.core.pipeline import deduplicate_step, hash_step, validate_step
from harmonizer_dagster_tests.conftest import write_audit_publish
from harmonizer_dagster.core.spec import load_specs
from harmonizer_dagster.core.warehouse import open_warehouse, postgres
postgres.PARALLEL_COPY_ROWS = 0  # PostgreSQL copies over several connections, as for a large file
landing, staging, sources = map(Path, sys.argv[1:4])
spec = {s.name: s for s in load_specs(sources)}["business_registry"]
store = open_warehouse(sys.argv[4], sys.argv[5])
def announced(step, write):
    def announce(*args):
        print(step, flush=True)  # the test kills inside the transaction that follows
        return write(*args)
    return announce
store.stage, store.publish = announced("stage", store.stage), announced("publish", store.publish)
hashed = hash_step(spec, locate(landing, spec.name, "big.csv"), store, staging, "run")
print("validate", flush=True)
validate_step(spec, hashed, batch_rows=int(sys.argv[6]))
print("deduplicate", flush=True)
deduplicate_step(spec, hashed)
write_audit_publish(spec, hashed, store, "run")
"""


def load_tables(store: PostgresWarehouse) -> list[str]:
    """The unlogged tables of parallel loads in the warehouse's schema."""
    rows = store.query(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND starts_with(c.relname, %s) ORDER BY 1",
        (store.schema_name, LOAD_TABLE_PREFIX),
    )
    return [name for (name,) in rows]


def loaded(store) -> dict:
    """What a load leaves behind, comparable across warehouses."""
    return {
        "rows": store.query("SELECT corp_number, status, CAST(_row_hash AS VARCHAR) FROM {schema}.business_registry"),
        "issues": store.query("SELECT count(*) FROM {schema}.data_quality_issues")[0][0],
        "failed": store.query("SELECT count(*) FROM {schema}.failed_records")[0][0],
        "sources": store.query(
            "SELECT status, records_imported, records_failed, records_skipped FROM {schema}.sources"
        ),
    }


def test_a_load_killed_at_any_step_converges_to_the_result_of_a_clean_load(warehouse, tmp_path):
    landing, staging = tmp_path / "landing", tmp_path / "staging"
    expected = write_registry_csv(landing / "business_registry" / "big.csv", 20_000, seed=11)
    url = f"duckdb:///{warehouse.path}" if hasattr(warehouse, "path") else warehouse.url

    def load(target_url: str, schema: str, stage: Path) -> subprocess.Popen:
        argv = [str(landing), str(stage), str(SOURCES_DIR), target_url, schema, str(BATCH_ROWS)]
        return subprocess.Popen(
            [sys.executable, "-c", FULL_LOAD, *argv], stdout=subprocess.PIPE, text=True, start_new_session=True
        )

    reference_store = open_warehouse(f"duckdb:///{tmp_path / 'reference.duckdb'}")
    assert load(f"duckdb:///{tmp_path / 'reference.duckdb'}", "harmonizer", tmp_path / "ref-staging").wait() == 0
    reference = loaded(reference_store)

    # Where each kill lands: the step the load announces, then a delay (inside its work).
    kills = [("validate", 0.3), ("deduplicate", 0.0), ("stage", 0.0), ("stage", 0.05)]
    kills += [("publish", 0.0), ("publish", 0.05)]
    for step, delay in kills:
        worker = load(url, warehouse.schema_name, staging)
        assert worker.stdout is not None
        for line in worker.stdout:
            if line.strip() == step:
                break
        time.sleep(delay)
        os.killpg(worker.pid, signal.SIGKILL)
        assert worker.wait() == -signal.SIGKILL, f"the kill landed while the load was running ({step} + {delay} s)"
    assert load(url, warehouse.schema_name, staging).wait() == 0

    result = loaded(warehouse)
    assert sorted(result["rows"]) == sorted(reference["rows"])
    assert {key: status for key, status, _ in result["rows"]} == expected["_imported_keys"]
    assert (result["issues"], result["failed"]) == (reference["issues"], reference["failed"])
    assert (
        result["sources"]
        == reference["sources"]
        == [("completed", expected["records_imported"], expected["records_failed"], expected["records_skipped"])]
    )
    assert not any(staging.glob("*/*/validate")), "staging is cleaned up once the load completes"
    staged = warehouse.query(f"SELECT count(*) FROM {warehouse.stage_table('business_registry')}")[0][0]
    assert staged == 0, "nothing stays staged once the version is published"
    if isinstance(warehouse, PostgresWarehouse):
        assert load_tables(warehouse) == [], "the unlogged tables of killed loads are dropped"


def test_staging_left_by_a_run_killed_after_its_publish_is_removed_by_the_next_run(specs, landing, tmp_path):
    spec = specs["news_articles"]
    store = open_warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    file = locate(landing, spec.name, "news_2026-11-20.json")
    hashed = hash_step(spec, file, store, tmp_path / "staging", "a")
    validate_step(spec, hashed)
    deduplicate_step(spec, hashed)
    shutil.copytree(hashed.stage_dir, tmp_path / "kept")
    write_audit_publish(spec, hashed, store, "a")
    # The run died between its commit and its clean-up: its staging is still there.
    shutil.copytree(tmp_path / "kept", hashed.stage_dir)

    again = hash_step(spec, file, store, tmp_path / "staging", "b")

    assert again.skipped and again.stage_dir == hashed.stage_dir
    assert not Path(hashed.stage_dir).exists()


@pytest.mark.parametrize("warehouse", ["postgres"], indirect=True)
def test_a_parallel_load_drops_what_killed_loads_left_and_spares_live_ones(warehouse, specs, tmp_path, monkeypatch):
    spec = specs["business_registry"]
    landing = tmp_path / "landing"
    expected = write_registry_csv(landing / spec.name / "big.csv", 20_000, seed=3)
    warehouse.migrate([spec])
    schema = warehouse.schema
    warehouse.query(f'CREATE UNLOGGED TABLE {schema}."{LOAD_TABLE_PREFIX}killed" (x INTEGER)')
    warehouse.query(f'CREATE UNLOGGED TABLE {schema}."{LOAD_TABLE_PREFIX}live" (x INTEGER)')
    monkeypatch.setattr(postgres, "PARALLEL_COPY_ROWS", 0)
    with psycopg.connect(warehouse.url, autocommit=True) as other_load:
        other_load.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"{LOAD_TABLE_PREFIX}live",))
        hashed = hash_step(spec, locate(landing, spec.name, "big.csv"), warehouse, tmp_path / "staging", "run")
        validate_step(spec, hashed, batch_rows=BATCH_ROWS)
        deduplicate_step(spec, hashed)
        result = write_audit_publish(spec, hashed, warehouse, "run")
        assert load_tables(warehouse) == [f"{LOAD_TABLE_PREFIX}live"]
    assert (result.records_imported, result.records_inserted) == (expected["records_imported"],) * 2
    imported = dict(warehouse.query("SELECT corp_number, status FROM {schema}.business_registry"))
    assert imported == expected["_imported_keys"]
