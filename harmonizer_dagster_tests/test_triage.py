"""Triage actions, learned rules and the dead-letter queue, on every warehouse."""

import polars as pl

from harmonizer_dagster.core.dead_letters import reprocess
from harmonizer_dagster.core.report import quality_report
from harmonizer_dagster.core.triage import Selection, act, render, summarize
from harmonizer_dagster_tests.conftest import load_file

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"


def statuses(store, issue_type):
    return dict(
        store.query(
            "SELECT resolution_status, count(*) FROM {schema}.data_quality_issues WHERE issue_type = %s GROUP BY 1",
            (issue_type,),
        )
    )


def test_resolve_and_ignore_change_state(warehouse, specs, landing, tmp_path):
    load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    text = render(summarize(warehouse, Selection(source=SOURCE)))
    assert "duplicate_key (6 issues)" in text and "invalid_date (3 issues)" in text
    outcome = act(warehouse, Selection(issue_type="duplicate_key"), "resolve", "last occurrence is right")
    assert outcome == {"issues": 6, "rules": []}
    assert statuses(warehouse, "duplicate_key") == {"resolved": 6}
    assert warehouse.query(
        "SELECT DISTINCT resolution_notes FROM {schema}.data_quality_issues WHERE issue_type = 'duplicate_key'"
    ) == [("last occurrence is right",)]
    one = warehouse.query(
        "SELECT CAST(issue_id AS VARCHAR) FROM {schema}.data_quality_issues WHERE issue_type = 'invalid_date' LIMIT 1"
    )[0][0]
    assert act(warehouse, Selection(issue_ids=(one,)), "ignore", "accepted")["issues"] == 1
    assert statuses(warehouse, "invalid_date") == {"ignored": 1, "pending": 2}
    assert act(warehouse, Selection(issue_ids=(one,)), "ignore")["issues"] == 0, "only pending issues are acted on"


def test_auto_fix_rule_fixes_a_reloaded_partition(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    frame = pl.read_csv(landing / SOURCE / Q3, infer_schema=False).head(50)
    dotted = pl.int_range(pl.len()) < 10  # ten dates in a format the spec does not know
    frame.with_columns(
        pl.when(dotted).then(pl.lit("15.03.2001")).otherwise(pl.col("Incorporation Date")).alias("Incorporation Date")
    ).write_csv(landing / SOURCE / "dotted.csv")
    first = load_file(spec, landing, "dotted.csv", warehouse, tmp_path / "s")
    rejected = first.records_failed
    assert rejected >= 10

    outcome = act(
        warehouse,
        Selection(issue_type="invalid_date", partition_key="dotted.csv"),
        "auto_fix",
        "dates from the new export",
        date_format="%d.%m.%Y",
    )
    assert len(outcome["rules"]) == 1
    second = load_file(spec, landing, "dotted.csv", warehouse, tmp_path / "s", run_id="after-rule")
    assert not second.skipped, "a new rule makes a loaded file worth loading again"
    assert second.records_failed == rejected - 10
    fixes = warehouse.query(
        "SELECT rule_id, old_value, new_value, count(*) FROM {schema}.applied_fixes GROUP BY 1, 2, 3"
    )
    assert fixes == [(outcome["rules"][0], "15.03.2001", "2001-03-15", 10)], "every applied fix is traceable"
    assert (
        warehouse.query("SELECT count(*) FROM {schema}.business_registry WHERE incorporation_date = DATE '2001-03-15'")[
            0
        ][0]
        >= 10
    )

    assert warehouse.set_rule_enabled(outcome["rules"][0], False)
    assert warehouse.active_rules(SOURCE) == []


def test_manual_fix_then_dead_letter_reprocess_is_idempotent(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    before = warehouse.query("SELECT count(*) FROM {schema}.business_registry")[0][0]
    bad_zip = warehouse.query(
        "SELECT CAST(issue_id AS VARCHAR), source_record_id, invalid_value FROM {schema}.data_quality_issues "
        "WHERE issue_type = 'invalid_zip_code' AND severity = 'error' ORDER BY source_line_number LIMIT 1"
    )[0]
    act(warehouse, Selection(issue_ids=(bad_zip[0],)), "manual_fix", "checked with the registry", map_to="02350")

    first = reprocess(spec, warehouse, tmp_path)
    assert (first.attempted, first.reprocessed, first.inserted) == (12, 1, 1)
    assert warehouse.query(
        "SELECT home_office_zip FROM {schema}.business_registry WHERE corp_number = %s", (bad_zip[1],)
    ) == [("02350",)]
    again = reprocess(spec, warehouse, tmp_path)
    assert (again.attempted, again.reprocessed, again.inserted, again.updated) == (11, 0, 0, 0)
    assert warehouse.query("SELECT count(*) FROM {schema}.business_registry")[0][0] == before + 1
    assert warehouse.query("SELECT count(*) FROM {schema}.failed_records WHERE reprocessed")[0][0] == 1


def test_report_lists_open_issues_and_check_history(warehouse, specs, landing, tmp_path):
    load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    markdown, figures = quality_report(warehouse, specs[SOURCE])
    assert "| duplicate_key | warning | 6 |" in markdown
    assert figures == {"open_issues": 30, "open_errors": 12, "versions_loaded": 1}


def test_triage_decisions_survive_a_reload(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    act(warehouse, Selection(issue_type="duplicate_key"), "ignore", "known upstream quirk")
    # An unrelated rule changes the fingerprint, so the same file is loaded again.
    warehouse.add_rule(SOURCE, "registered_agent", "map_value", {"from": "x", "to": "y"}, "", None)
    assert not load_file(spec, landing, Q3, warehouse, tmp_path / "s", run_id="reload").skipped
    assert statuses(warehouse, "duplicate_key") == {"ignored": 6}


def test_a_fixed_dead_letter_never_overwrites_another_files_row(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    frame = pl.read_csv(landing / SOURCE / Q3, infer_schema=False).head(3)
    frame.write_csv(landing / SOURCE / "older.csv")
    frame.with_columns(pl.lit("AB123").alias("Home Office Zip"), pl.lit("DISSOLVED").alias("Status")).write_csv(
        landing / SOURCE / "newer.csv"
    )
    load_file(spec, landing, "older.csv", warehouse, tmp_path / "s")
    load_file(spec, landing, "newer.csv", warehouse, tmp_path / "s")
    act(warehouse, Selection(partition_key="newer.csv", issue_type="invalid_zip_code"), "manual_fix", map_to="01234")
    result = reprocess(spec, warehouse, tmp_path)
    assert (result.attempted, result.reprocessed, result.updated) == (3, 0, 0)
    pending = warehouse.query("SELECT count(*), min(error_message) FROM {schema}.failed_records WHERE NOT reprocessed")
    assert pending[0][0] == 3 and "another file" in pending[0][1]
