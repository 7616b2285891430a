"""Anomaly checks compare a file version with the earlier versions of its source, on every
warehouse: each crafted anomaly fails its own check (a warning, so the version is still
published), and a version repeating the previous one passes them all."""

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from harmonizer_dagster.core.quality import checks_for, run_check
from harmonizer_dagster.core.spec import Anomalies, SpecError, load_spec, parse_spec
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster_tests.conftest import checks_evaluated, load_file

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"
ANOMALY_CHECKS = {"volume_change", "null_rate_drift", "rejected_rate_drift", "key_churn"}
EVERY_FIFTH = pl.int_range(pl.len()) % 5 == 0


def load_and_check(spec, landing, key, store, staging):
    """Loads a landed file and evaluates its anomaly checks, as the ingest jobs do after each load."""
    assert not load_file(spec, landing, key, store, staging).skipped, "a crafted version must be loaded, not skipped"
    return {c.name: run_check(store, spec, c, key, "anomaly-run") for c in checks_for(spec) if c.name in ANOMALY_CHECKS}


def recorded(store, key):
    rows = store.query(
        "SELECT check_name, severity, passed, observed_value, threshold, counts, message "
        "FROM {schema}.data_quality_checks WHERE partition_key = %s",
        (key,),
    )
    return {
        name: (severity, passed, observed, threshold, json.loads(counts), message)
        for name, severity, passed, observed, threshold, counts, message in rows
    }


def craft(landing: Path, name: str, frame: pl.DataFrame) -> str:
    frame.write_csv(landing / SOURCE / name)
    return name


def q3(landing: Path) -> pl.DataFrame:
    return pl.read_csv(landing / SOURCE / Q3, infer_schema=False)


def test_the_first_version_has_nothing_to_compare_with(warehouse, specs, landing, tmp_path):
    results = load_and_check(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    assert set(results) == ANOMALY_CHECKS
    assert {(r.passed, r.observed, r.message) for r in results.values()} == {
        (True, None, "no earlier version to compare with")
    }
    rows = recorded(warehouse, Q3)
    assert {name: rows[name][:3] for name in ANOMALY_CHECKS} == dict.fromkeys(ANOMALY_CHECKS, ("warning", True, None))
    # The version's own null rates are kept for the versions after it.
    figures = rows["null_rate_drift"][4]
    assert figures["rows_written"] == 988
    assert figures["null_rates"]["registered_agent"] == 0.0
    assert "legal_name" not in figures["null_rates"], "required columns are judged by the rejected rate"


CRAFTED = {
    # Fewer than half the records: the volume falls, and more than half the keys are gone.
    "fewer records": (lambda f: f.head(450), {"volume_change", "key_churn"}),
    "mostly empty column": (
        lambda f: f.with_columns(
            pl.when(EVERY_FIFTH).then(pl.col("Registered Agent")).otherwise(None).alias("Registered Agent")
        ),
        {"null_rate_drift"},
    ),
    # A missing legal name rejects the record.
    "many rejected records": (
        lambda f: f.with_columns(pl.when(EVERY_FIFTH).then(None).otherwise(pl.col("Legal Name")).alias("Legal Name")),
        {"rejected_rate_drift"},
    ),
    "mostly new keys": (
        lambda f: f.with_columns(
            pl.when(EVERY_FIFTH).then(pl.col("Corp Number")).otherwise("9" + pl.col("Corp Number")).alias("Corp Number")
        ),
        {"key_churn"},
    ),
    # The same records in a file of other bytes (CRLF line ends): not a duplicate, a new version.
    "same data": (lambda f: f, set()),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_version_fails_the_check_of_its_anomaly(case, warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    load_and_check(spec, landing, Q3, warehouse, tmp_path / "s")
    transform, failing = CRAFTED[case]
    key = "next.csv"
    transform(q3(landing)).write_csv(landing / SOURCE / key, line_terminator="\r\n")
    results = load_and_check(spec, landing, key, warehouse, tmp_path / "s")
    assert {name for name, r in results.items() if not r.passed} == failing, {n: r.message for n, r in results.items()}
    rows = recorded(warehouse, key)
    assert {name: rows[name][1] for name in ANOMALY_CHECKS} == {name: name not in failing for name in ANOMALY_CHECKS}
    assert {rows[name][0] for name in ANOMALY_CHECKS} == {"warning"}
    for name, result in results.items():
        assert rows[name][2:4] == (result.observed, result.threshold), "the history holds the result's figures"
        assert result.observed is not None, "there is an earlier version to compare with"

    if case == "fewer records":
        assert results["volume_change"].observed == pytest.approx(450 / 1006 - 1, abs=1e-6)
        assert rows["volume_change"][4] | {"ratio": None} == {
            "records_in_file": 450,
            "ratio": None,
            "baseline": 1006.0,
            "previous": 1006,
            "versions_compared": 1,
        }
    elif case == "mostly empty column":
        assert "registered_agent" in results["null_rate_drift"].message
        figures = rows["null_rate_drift"][4]
        assert figures["columns_over"] == ["registered_agent"]
        assert figures["null_rates"]["registered_agent"] == pytest.approx(0.8, abs=0.01)
        assert figures["baseline_null_rates"]["registered_agent"] == 0.0
    elif case == "many rejected records":
        assert results["rejected_rate_drift"].observed == pytest.approx(0.2, abs=0.01)
    elif case == "mostly new keys":
        counts = rows["key_churn"][4]
        assert counts["new_keys"] / counts["keys"] == pytest.approx(0.8, abs=0.01)
        assert counts["dropped_keys"] / counts["previous_keys"] == pytest.approx(0.8, abs=0.01)
    else:
        assert [results[n].observed for n in ("volume_change", "rejected_rate_drift", "key_churn")] == [0.0] * 3
        assert rows["null_rate_drift"][4]["rows_written"] == 0, "every record is unchanged"
        assert results["null_rate_drift"].observed == 0.0


def test_the_baseline_is_the_median_of_earlier_partitions_not_the_partitions_own_loads(
    warehouse, specs, landing, tmp_path
):
    spec = specs[SOURCE]
    frame = q3(landing)
    for key, rows in (("a.csv", 1000), ("b.csv", 400), ("c.csv", 990)):
        load_and_check(spec, landing, craft(landing, key, frame.head(rows)), warehouse, tmp_path / "s")
    # A corrected re-upload of c.csv is compared with a.csv and b.csv, not with c.csv's first load.
    results = load_and_check(spec, landing, craft(landing, "c.csv", frame.head(420)), warehouse, tmp_path / "s")
    volume = results["volume_change"]
    assert volume.counts["versions_compared"] == 2
    assert volume.counts["baseline"] == 700.0, "the median of 1000 and 400 records"
    assert volume.counts["previous"] == 400
    assert volume.passed, volume.message
    imported_by_b = warehouse.query("SELECT records_imported FROM {schema}.sources WHERE partition_key = 'b.csv'")
    assert results["key_churn"].counts["previous_keys"] == imported_by_b[0][0]


def test_the_spec_sets_the_thresholds(specs):
    assert specs[SOURCE].anomalies == Anomalies()
    base = {"name": "w", "owner": "o", "format": "csv", "natural_key": ["k"], "columns": {"k": {}}}
    assert not ANOMALY_CHECKS & {c.name for c in checks_for(parse_spec({**base, "anomalies": False}))}
    spec = parse_spec({**base, "anomalies": {"volume_change": None, "key_churn": 0.3, "severity": "error"}})
    checks = {c.name: c for c in checks_for(spec) if c.name in ANOMALY_CHECKS}
    assert set(checks) == ANOMALY_CHECKS - {"volume_change"}
    assert {c.severity for c in checks.values()} == {"error"}, "error severity makes them blocking"
    assert spec.anomalies and (spec.anomalies.key_churn, spec.anomalies.null_rate_increase) == (0.3, 0.2)


def test_a_wrong_threshold_names_its_field_and_line(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(
        "name: w\nowner: o\nformat: csv\nnatural_key: [k]\ncolumns: {k: {}}\n"
        "anomalies:\n  key_churn: 2\n  baseline_versions: 0\n  volume_change: yes\n  colour: blue\n"
    )
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    found = {(p.field, p.line) for p in raised.value.problems}
    assert found == {
        ("anomalies.key_churn", 7),
        ("anomalies.baseline_versions", 8),
        ("anomalies.volume_change", 9),
        ("anomalies.colour", 10),
    }


def test_anomaly_checks_are_warning_asset_checks_that_do_not_block_publication(environment, landing):
    defs = build_definitions()
    check_keys = defs.resolve_asset_graph().asset_check_keys
    assert {k.name for k in check_keys if k.asset_key == dg.AssetKey(SOURCE)} == {"blocking_checks", "warning_checks"}
    shutil.copy(landing / SOURCE / Q3, landing / SOURCE / "full.csv")
    craft(landing, "half.csv", q3(landing).head(450))
    job = defs.resolve_job_def(f"load_{SOURCE}")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(f"{SOURCE}_files", ["full.csv", "half.csv"])
        assert job.execute_in_process(instance=instance, partition_key="full.csv").success
        half = job.execute_in_process(instance=instance, partition_key="half.csv")
        assert half.success
        evaluations = checks_evaluated(half.get_asset_check_evaluations())
        assert not evaluations["volume_change"]["passed"]
        assert {evaluations[n]["severity"] for n in ANOMALY_CHECKS} == {dg.AssetCheckSeverity.WARN}
        assert {evaluations[n]["asset_check"] for n in ANOMALY_CHECKS} == {"warning_checks"}
        assert evaluations["volume_change"]["baseline"] == 1006.0
        published = {m.asset_key.to_user_string() for m in half.get_asset_materialization_events()}
        assert f"{SOURCE}_published" in published, "a failing warning does not block publication"
    with duckdb.connect(str(environment), read_only=True) as con:
        assert con.execute(
            "SELECT passed, severity FROM harmonizer.data_quality_checks "
            "WHERE partition_key = 'half.csv' AND check_name = 'volume_change'"
        ).fetchall() == [(False, "warning")]
