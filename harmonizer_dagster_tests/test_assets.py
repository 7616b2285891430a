"""The source assets run for real on a Dagster instance: metadata, data versions, re-execution."""

import dagster as dg
import duckdb

from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster_tests import reconstructable_jobs

Q3 = "registry_2026-Q3.csv"


def test_definitions_snapshot():
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "business_registry",
        "court_records",
        "news_articles",
        "business_registry_published",
        "court_records_published",
        "news_articles_published",
        "business_registry_dq_report",
        "court_records_dq_report",
        "news_articles_dq_report",
    }
    assert {job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")} == {
        "load_business_registry",
        "load_court_records",
        "load_news_articles",
        "load_business_registry_files",
        "load_court_records_files",
        "load_news_articles_files",
        "fetch_business_registry",
        "fetch_court_records",
        "fetch_news_articles",
        "register_file_versions",
        "ingest_landing",
        "smoke_test",
        "triage_issues",
        "reprocess_failed_records",
        "decide_held_version",
        "housekeeping",
        "backup_warehouse",
    }
    repository = defs.get_repository_def()
    assert {s.name for s in repository.sensor_defs} == {
        "business_registry_landing_sensor",
        "court_records_landing_sensor",
        "news_articles_landing_sensor",
        "default_automation_condition_sensor",
        "run_failure_alerts",
        "run_success_alerts",
        "stalled_run_alerts",
        "unrecorded_failures",
    }
    assert {s.name for s in repository.schedule_defs} == {
        "business_registry_schedule",
        "court_records_schedule",
        "news_articles_schedule",
        "housekeeping_daily",
    }
    asset = defs.resolve_assets_def("business_registry")
    assert [node.name for node in asset.node_def.node_defs] == [
        "business_registry_partitions",
        "business_registry_hash",
        "business_registry_validate",
        "business_registry_deduplicate",
        "business_registry_stage",
        "business_registry_audit",
        "business_registry_publish",
    ]
    assert asset.keys == {dg.AssetKey("business_registry"), dg.AssetKey("business_registry_published")}
    assert {key.name for key in asset.check_keys} == {"blocking_checks", "warning_checks"}
    assert isinstance(asset.partitions_def, dg.DynamicPartitionsDefinition)
    assert asset.partitions_def.name == "business_registry_files"
    schema = asset.specs_by_key[dg.AssetKey("business_registry")].metadata["dagster/column_schema"]
    assert [c.name for c in schema.columns][:2] == ["corp_number", "legal_name"]


def test_materializing_a_partition_reports_counts_schema_and_data_version(environment, instance):
    defs = build_definitions()
    instance.add_dynamic_partitions("business_registry_files", [Q3])
    job = defs.resolve_job_def("load_business_registry")
    result = job.execute_in_process(instance=instance, partition_key=Q3)
    assert result.success
    event = instance.get_latest_materialization_event(dg.AssetKey("business_registry"))
    materialization = event.asset_materialization
    assert materialization.partition == Q3
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 988
    assert (metadata["inserted"], metadata["updated"], metadata["unchanged"], metadata["rejected"]) == (988, 0, 0, 12)
    assert metadata["rows_per_second"] > 0
    assert metadata["dagster/column_schema"].columns[0].name == "corp_number"
    file_hash = metadata["file_hash"]
    assert materialization.tags["dagster/data_version"] == file_hash
    with duckdb.connect(str(environment), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM harmonizer.business_registry").fetchone() == (988,)

    assert job.execute_in_process(instance=instance, partition_key=Q3).success
    event = instance.get_latest_materialization_event(dg.AssetKey("business_registry"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["status"] == "skipped"
    assert metadata["file_hash"] == file_hash


def test_reexecution_from_failure_resumes_at_the_failed_op(environment, instance):
    instance.add_dynamic_partitions("business_registry_files", [Q3])
    # A column the pipeline does not fill makes the stage op fail after the other ops succeeded.
    with duckdb.connect(str(environment)) as con:
        con.execute("CREATE SCHEMA harmonizer_stage")
        con.execute(
            "CREATE TABLE harmonizer_stage.business_registry (_source_id BIGINT, corp_number VARCHAR, "
            "blocker VARCHAR NOT NULL)"
        )
    job = dg.reconstructable(reconstructable_jobs.load_business_registry)
    with dg.execute_job(job, instance, tags={"dagster/partition": Q3}, raise_on_error=False) as first:
        assert not first.success
        failed_steps = {e.step_key for e in first.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE}
        assert failed_steps == {"business_registry.business_registry_stage"}
        first_run_id = first.run_id
    status = duckdb.connect(str(environment), read_only=True)
    assert status.execute("SELECT status FROM harmonizer.sources").fetchone() == ("failed",)
    status.close()

    with duckdb.connect(str(environment)) as con:
        con.execute("ALTER TABLE harmonizer_stage.business_registry DROP COLUMN blocker")
    options = dg.ReexecutionOptions.from_failure(first_run_id, instance)
    # As the UI's "re-execute from failure" does, the new run keeps its parent's partition tag.
    with dg.execute_job(job, instance, reexecution_options=options, tags={"dagster/partition": Q3}) as second:
        assert second.success
        executed = {
            e.step_key
            for e in second.all_events
            if e.event_type == dg.DagsterEventType.STEP_START and e.step_key.startswith("business_registry.")
        }
        assert executed == {f"business_registry.business_registry_{step}" for step in ("stage", "audit", "publish")}, (
            "completed ops are not redone"
        )
    with duckdb.connect(str(environment), read_only=True) as con:
        assert con.execute("SELECT status, records_imported FROM harmonizer.sources").fetchone() == ("completed", 988)
        assert con.execute("SELECT count(*) FROM harmonizer.business_registry").fetchone() == (988,)
