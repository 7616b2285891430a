"""Data-quality checks pass on clean data and fail on data crafted to fail them, on every warehouse;
failing blocking checks keep a partition from being published."""

import json
import shutil

import dagster as dg
import duckdb
import polars as pl

from harmonizer_dagster.core.quality import checks_for, run_check
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster_tests.conftest import checks_evaluated, load_file

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"


def evaluate(store, spec, partition_key=Q3):
    return {check.name: run_check(store, spec, check, partition_key, "check-run") for check in checks_for(spec)}


def test_every_check_passes_on_the_clean_sample(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    results = evaluate(warehouse, spec)
    assert set(results) == {
        "row_count_reconciliation",
        "natural_key_unique",
        "required_fields_complete",
        "rejected_rate",
        "schema_drift",
        "home_office_zip_pass_rate",
        "email_pass_rate",
        "volume_change",
        "null_rate_drift",
        "rejected_rate_drift",
        "key_churn",
    }
    assert {name: r.passed for name, r in results.items()} == dict.fromkeys(results, True)
    history = warehouse.query(
        "SELECT check_name, passed, observed_value, threshold, counts FROM "
        "{schema}.data_quality_checks WHERE run_id = 'check-run' ORDER BY check_name"
    )
    assert [(n, p, o, t) for n, p, o, t, _ in history] == sorted(
        (n, r.passed, r.observed, r.threshold) for n, r in results.items()
    ), "the history table holds the same figures as the results"
    assert json.loads(dict((n, c) for n, _, _, _, c in history)["row_count_reconciliation"]) == {
        "in_file": 1006,
        "imported": 988,
        "failed": 12,
        "skipped": 6,
    }
    linked = dict(warehouse.query("SELECT rule, min(check_name) FROM {schema}.data_quality_issues GROUP BY rule"))
    assert linked["natural_key"] == "natural_key_unique"
    assert linked["not_nullable"] == "required_fields_complete"


def test_crafted_failures(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    table = warehouse.table(SOURCE)
    warehouse.query("UPDATE {schema}.sources SET records_imported = records_imported - 1")
    warehouse.query(f"UPDATE {table} SET legal_name = NULL WHERE corp_number = (SELECT min(corp_number) FROM {table})")
    if not warehouse.key_index:  # with a primary-key index the database itself refuses duplicates
        warehouse.query(f"INSERT INTO {table} SELECT * FROM {table} LIMIT 1")
    results = evaluate(warehouse, spec)
    assert not results["row_count_reconciliation"].passed
    assert not results["required_fields_complete"].passed
    assert results["natural_key_unique"].passed is warehouse.key_index


def test_a_key_the_database_keeps_unique_is_not_looked_up_and_one_it_does_not_keep_is(
    warehouse, specs, landing, tmp_path
):
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    unique = evaluate(warehouse, spec)["natural_key_unique"]
    assert unique.passed and unique.counts["rows_written"] == 988
    assert unique.counts["enforced_by_index"] == int(warehouse.key_index)
    assert ("unique index on (corp_number)" in unique.message) is warehouse.key_index
    # Without the index (dropped by hand), the written keys are looked up and a duplicate found.
    table = warehouse.table(SOURCE)
    if warehouse.key_index:
        [(constraint,)] = warehouse.query(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'", (table,)
        )
        warehouse.query(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"')
    warehouse.query(f"INSERT INTO {table} SELECT * FROM {table} LIMIT 1")
    unique = evaluate(warehouse, spec)["natural_key_unique"]
    assert not unique.passed
    assert (unique.counts["duplicated_keys"], unique.counts["enforced_by_index"]) == (1, 0)


def test_pass_rate_and_schema_drift_fail_on_a_drifting_file(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    frame = pl.read_csv(landing / SOURCE / Q3, infer_schema=False)
    bad_zips = pl.int_range(pl.len()) % 10 == 0  # 10% four-digit zips: above the 3% allowed
    drifted = frame.with_columns(
        pl.when(bad_zips).then(pl.lit("1234")).otherwise(pl.col("Home Office Zip")).alias("Home Office Zip"),
        pl.lit("x").alias("Fax Number"),
    )
    drifted.write_csv(landing / SOURCE / "drifted.csv")
    load_file(spec, landing, "drifted.csv", warehouse, tmp_path / "s")
    results = evaluate(warehouse, spec, "drifted.csv")
    assert not results["home_office_zip_pass_rate"].passed
    assert results["home_office_zip_pass_rate"].observed < 0.97
    assert not results["schema_drift"].passed
    assert results["schema_drift"].counts["added"] == ["Fax Number"]
    assert results["row_count_reconciliation"].passed


def test_a_failing_blocking_check_keeps_the_partition_unpublished(environment, landing):
    frame = pl.read_csv(landing / SOURCE / Q3, infer_schema=False)
    frame.with_columns(pl.lit("1234").alias("Home Office Zip")).write_csv(landing / SOURCE / "bad zips.csv")
    shutil.copy(landing / SOURCE / Q3, landing / SOURCE / "good.csv")
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(f"{SOURCE}_files", ["good.csv", "bad zips.csv"])
        good = job.execute_in_process(instance=instance, partition_key="good.csv")
        assert good.success
        assert {m.asset_key.to_user_string() for m in good.get_asset_materialization_events()} == {
            SOURCE,
            f"{SOURCE}_published",
        }
        # Each bad zip is only a warning, but a file where most zips are bad fails the
        # blocking pass-rate check.
        bad = job.execute_in_process(instance=instance, partition_key="bad zips.csv", raise_on_error=False)
        evaluations = checks_evaluated(bad.get_asset_check_evaluations())
        assert not evaluations["home_office_zip_pass_rate"]["passed"]
        published = [
            m for m in bad.get_asset_materialization_events() if m.asset_key.to_user_string() == f"{SOURCE}_published"
        ]
        assert published == [], "a partition failing a blocking check is not published"
    with duckdb.connect(str(environment), read_only=True) as con:
        rows = dict(con.execute("SELECT partition_key, published_at IS NOT NULL FROM harmonizer.sources").fetchall())
        assert rows == {"good.csv": True, "bad zips.csv": False}
        held = con.execute("SELECT count(*) FROM harmonizer.business_registry WHERE home_office_zip = '1234'")
        assert held.fetchone() == (0,), "the held version's values never reach the table consumers read"
        recorded = dict(
            con.execute(
                "SELECT check_name, passed FROM harmonizer.data_quality_checks WHERE partition_key = 'bad zips.csv'"
            ).fetchall()
        )
        assert recorded == {name: figures["passed"] for name, figures in evaluations.items()}


def test_a_file_with_every_natural_key_missing_is_loaded_but_not_published(environment, landing):
    frame = pl.read_csv(landing / SOURCE / Q3, infer_schema=False)
    frame.with_columns(pl.lit(None, pl.String).alias("Corp Number")).write_csv(landing / SOURCE / "no keys.csv")
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(f"{SOURCE}_files", ["no keys.csv"])
        result = job.execute_in_process(instance=instance, partition_key="no keys.csv", raise_on_error=False)
        evaluations = checks_evaluated(result.get_asset_check_evaluations())
        assert not evaluations["rejected_rate"]["passed"] and evaluations["rejected_rate"]["blocking"]
        assert evaluations["row_count_reconciliation"]["passed"], "every record is accounted for: all rejected"
        assert {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()} == {SOURCE}
    with duckdb.connect(str(environment), read_only=True) as con:
        assert con.execute(
            "SELECT records_in_file, records_failed, published_at IS NULL FROM harmonizer.sources"
        ).fetchall() == [(1006, 1006, True)]


def test_an_identical_copy_is_judged_by_the_load_it_duplicates(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    shutil.copy(landing / SOURCE / Q3, landing / SOURCE / "copy.csv")
    assert load_file(spec, landing, "copy.csv", warehouse, tmp_path / "s").skipped
    results = evaluate(warehouse, spec, "copy.csv")
    assert all(r.passed for r in results.values()), {n: r.message for n, r in results.items()}
