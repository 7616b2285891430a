"""The data-quality workflow through Dagster: triage from launchpad config, the report asset,
and the dead-letter reprocess job."""

import dagster as dg
import duckdb
import pytest

from harmonizer_dagster.definitions import build_definitions

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"


@pytest.fixture
def loaded(environment, instance):
    instance.add_dynamic_partitions(f"{SOURCE}_files", [Q3])
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    assert job.execute_in_process(instance=instance, partition_key=Q3).success
    return instance, environment


def test_triage_job_acts_on_issues_selected_in_launchpad_config(loaded):
    instance, warehouse = loaded
    config = {
        "ops": {
            "triage_selected_issues": {
                "config": {
                    "action": "auto_fix",
                    "issue_type": "invalid_zip_code",
                    "field_name": "home_office_zip",
                    "pad_to_width": 5,
                    "note": "spreadsheet lost the leading zero",
                }
            }
        }
    }
    result = (
        build_definitions().resolve_job_def("triage_issues").execute_in_process(instance=instance, run_config=config)
    )
    assert result.success
    # Padding repairs the 12 four-digit zips; the 4 like AB350 stay pending, and the job says so.
    outcome = result.output_for_node("triage_selected_issues")
    assert (outcome["issues"], outcome["unfixed"]) == (12, 4)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT kind, params, enabled FROM harmonizer.transformation_rules").fetchall() == [
            ("pad_left", '{"fill": "0", "width": 5}', True)
        ]
        assert con.execute(
            "SELECT resolution_status, count(*) FROM harmonizer.data_quality_issues "
            "WHERE issue_type = 'invalid_zip_code' GROUP BY 1 ORDER BY 1"
        ).fetchall() == [("auto_fix", 12), ("pending", 4)]


def test_report_asset_and_reprocess_job(loaded):
    instance, _ = loaded
    defs = build_definitions()
    report = (
        defs.resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={dg.AssetKey(f"{SOURCE}_dq_report")})
        .execute_in_process(instance=instance)
    )
    assert report.success
    event = instance.get_latest_materialization_event(dg.AssetKey(f"{SOURCE}_dq_report"))
    metadata = event.asset_materialization.metadata
    assert "| missing_required_field | error | 5 |" in metadata["report"].value
    assert metadata["open_issues"].value == 30

    reprocessed = defs.resolve_job_def("reprocess_failed_records").execute_in_process(instance=instance)
    assert reprocessed.success
    figures = reprocessed.output_for_node("reprocess_dead_letters")[SOURCE]
    assert figures["attempted"] == 12 and figures["reprocessed"] == 0, "nothing passes before a fix"
