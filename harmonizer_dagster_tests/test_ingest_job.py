"""The quickstart's path: `ingest_landing` checks, publishes and reports every file it loads, the
way materializing the asset does, and the landing sensors that start afterwards do not load
those files a second time."""

import shutil

import dagster as dg
import duckdb
import polars as pl

from harmonizer_dagster.core.quality import checks_for
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.orchestration.checks import check_specs
from harmonizer_dagster.orchestration.resources import LandingZone
from harmonizer_dagster_tests.conftest import checks_evaluated
from harmonizer_dagster_tests.test_sensors import folder_sensor, requested, tick

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"
LANDED = {
    "business_registry": ["bad zips.csv", "registry_2026-Q3.csv", "registry_2026-Q4.csv.gz"],
    "court_records": ["court_2026-11-15.ndjson"],
    "news_articles": ["news_2026-11-20.json"],
}


def test_ingest_landing_checks_publishes_and_reports_every_file(environment, landing, specs, instance):
    # Most zips four digits long: loaded, but the blocking pass-rate check fails.
    frame = pl.read_csv(landing / SOURCE / Q3, infer_schema=False)
    frame.with_columns(pl.lit("1234").alias("Home Office Zip")).write_csv(landing / SOURCE / "bad zips.csv")

    job = build_definitions().resolve_job_def("ingest_landing")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    (failure,) = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.step_key == f"{SOURCE}_publish", "the held file fails its source's load, naming it"
    assert "1 of 3 file(s) failed: bad zips.csv: bad zips.csv is held" in failure.step_failure_data.error.message

    with duckdb.connect(str(environment), read_only=True) as con:
        recorded = con.execute(
            "SELECT asset, partition_key, count(*) FROM harmonizer.data_quality_checks GROUP BY ALL"
        ).fetchall()
        published = dict(
            con.execute(
                "SELECT partition_key, published_at IS NOT NULL FROM harmonizer.sources "
                "WHERE status IN ('completed', 'held')"
            ).fetchall()
        )
    assert sorted(recorded) == sorted(
        (source, key, len(checks_for(specs[source]))) for source, keys in LANDED.items() for key in keys
    ), "one row per check per loaded file"
    assert published == {key: key != "bad zips.csv" for keys in LANDED.values() for key in keys}
    with duckdb.connect(str(environment), read_only=True) as con:
        zips = con.execute("SELECT count(*) FROM harmonizer.business_registry WHERE home_office_zip = '1234'")
        assert zips.fetchone() == (0,), "the held file's values never reach the table consumers read"

    evaluations = result.get_asset_check_evaluations()
    groups = {(e.asset_key.to_user_string(), e.check_name, e.partition) for e in evaluations}
    assert len(groups) == len(evaluations) == sum(len(check_specs(specs[s])) * len(keys) for s, keys in LANDED.items())
    bad = checks_evaluated(e for e in evaluations if e.partition == "bad zips.csv")
    assert set(bad) == {check.name for check in checks_for(specs[SOURCE])}
    assert not bad["home_office_zip_pass_rate"]["passed"] and bad["home_office_zip_pass_rate"]["blocking"]
    failed = [(e.check_name, e.partition, e.metadata["failed_checks"].value) for e in evaluations if not e.passed]
    assert failed == [("blocking_checks", "bad zips.csv", "home_office_zip_pass_rate")]

    # From the instance: the result leaves out events of a step that failed after logging them.
    records = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    events = [record.event_log_entry.dagster_event for record in records]
    materialized = {(event.asset_key.to_user_string(), event.partition) for event in events}
    for source, keys in LANDED.items():
        assert (f"{source}_dq_report", None) in materialized, "each source's report is refreshed"
        for key in keys:
            assert (source, key) in materialized
            assert ((f"{source}_published", key) in materialized) is (key != "bad zips.csv")
    # The instance holds the checks as the asset's own: the UI shows them on the partition.
    latest = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(SOURCE), "blocking_checks"), limit=10
    )
    assert {record.partition for record in latest} == set(LANDED[SOURCE])


def test_sensors_do_not_reload_what_ingest_landing_loaded(environment, landing, specs, instance, tmp_path):
    assert build_definitions().resolve_job_def("ingest_landing").execute_in_process(instance=instance).success
    sensor = folder_sensor(specs)
    zone = LandingZone(landing_dir=str(landing), staging_dir=str(tmp_path / "staging"))

    _, cursor = tick(sensor, instance, None, landing=zone)
    second, cursor = tick(sensor, instance, cursor, landing=zone)
    assert second.run_requests == [], "files loaded with the same content start no run"
    assert set(instance.get_dynamic_partitions(f"{SOURCE}_files")) == set(LANDED[SOURCE]) - {"bad zips.csv"}

    # A changed file under a known name is new content: it gets its run.
    shutil.copy(landing / SOURCE / Q3, tmp_path / "q3.csv")
    with (landing / SOURCE / Q3).open("a") as handle:
        handle.write("C9999999,Late Arrival LLC,ACTIVE,2026-01-02,DE,10001,late@example.com\n")
    third, cursor = tick(sensor, instance, cursor, landing=zone)
    fourth, cursor = tick(sensor, instance, cursor, landing=zone)
    assert [*requested(third), *requested(fourth)] == [Q3]


def test_a_skipped_version_shows_the_counts_of_its_earlier_load(environment, instance):
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    instance.add_dynamic_partitions(f"{SOURCE}_files", [Q3])
    assert job.execute_in_process(instance=instance, partition_key=Q3).success
    again = job.execute_in_process(instance=instance, partition_key=Q3)
    [event] = [e for e in again.get_asset_materialization_events() if e.asset_key == dg.AssetKey(SOURCE)]
    metadata = {name: value.value for name, value in event.materialization.metadata.items()}
    assert metadata["status"] == "skipped"
    assert metadata["skipped_because"] == "already loaded: the file has not changed"
    assert {name: metadata[name] for name in ("records_in_file", "inserted", "rejected", "dagster/row_count")} == {
        "records_in_file": 1006,
        "inserted": 988,
        "rejected": 12,
        "dagster/row_count": 988,
    }


def test_ingest_landing_over_an_empty_landing_area_reports_on_a_new_warehouse(environment, landing, instance):
    for folder in landing.iterdir():
        if folder.is_dir():
            shutil.rmtree(folder)

    result = build_definitions().resolve_job_def("ingest_landing").execute_in_process(instance=instance)

    assert result.success
    reports = instance.fetch_materializations(dg.AssetKey(f"{SOURCE}_dq_report"), limit=1).records
    assert reports, "the report of a source with no file yet is materialized all the same"
    with duckdb.connect(str(environment), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM harmonizer.sources").fetchone() == (0,)
