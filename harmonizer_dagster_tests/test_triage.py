"""Triage actions, learned rules and the dead-letter queue, on every warehouse."""

import threading
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

from harmonizer_dagster.core.dead_letters import reprocess
from harmonizer_dagster.core.report import quality_report
from harmonizer_dagster.core.triage import Selection, act, list_issues, list_rules, render, shown, summarize
from harmonizer_dagster.core.warehouse import base
from harmonizer_dagster.core.warehouse.base import SavedRule
from harmonizer_dagster.core.warehouse.tables import MIGRATIONS
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
    assert (outcome.issues, outcome.rules, outcome.message()) == (6, [], "resolve: 6 issues updated")
    assert statuses(warehouse, "duplicate_key") == {"resolved": 6}
    assert warehouse.query(
        "SELECT DISTINCT resolution_notes FROM {schema}.data_quality_issues WHERE issue_type = 'duplicate_key'"
    ) == [("last occurrence is right",)]
    one = warehouse.query(
        "SELECT CAST(issue_id AS VARCHAR) FROM {schema}.data_quality_issues WHERE issue_type = 'invalid_date' LIMIT 1"
    )[0][0]
    assert act(warehouse, Selection(issue_ids=(one,)), "ignore", "accepted").issues == 1
    assert statuses(warehouse, "invalid_date") == {"ignored": 1, "pending": 2}
    assert act(warehouse, Selection(issue_ids=(one,)), "ignore").issues == 0, "only pending issues are acted on"


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
        specs=[spec],
        date_format="%d.%m.%Y",
    )
    assert (outcome.issues, outcome.unfixed, len(outcome.rules)) == (10, 0, 1)
    second = load_file(spec, landing, "dotted.csv", warehouse, tmp_path / "s", run_id="after-rule")
    assert not second.skipped, "a new rule makes a loaded file worth loading again"
    assert second.records_failed == rejected - 10
    fixes = warehouse.query(
        "SELECT rule_id, old_value, new_value, count(*) FROM {schema}.applied_fixes GROUP BY 1, 2, 3"
    )
    assert fixes == [(outcome.rules[0], "15.03.2001", "2001-03-15", 10)], "every applied fix is traceable"
    assert (
        warehouse.query("SELECT count(*) FROM {schema}.business_registry WHERE incorporation_date = DATE '2001-03-15'")[
            0
        ][0]
        >= 10
    )

    assert warehouse.set_rule_enabled(outcome.rules[0], False)
    assert warehouse.active_rules(SOURCE) == []


def test_manual_fix_then_dead_letter_reprocess_is_idempotent(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    before = warehouse.query("SELECT count(*) FROM {schema}.business_registry")[0][0]
    bad_zip = warehouse.query(
        "SELECT CAST(issue_id AS VARCHAR), source_record_id, invalid_value FROM {schema}.data_quality_issues "
        "WHERE issue_type = 'invalid_zip_code' AND severity = 'error' ORDER BY source_line_number LIMIT 1"
    )[0]
    fixed = act(
        warehouse,
        Selection(issue_ids=(bad_zip[0],)),
        "manual_fix",
        "checked with the registry",
        specs=[spec],
        map_to="02350",
    )
    assert fixed.issues == 1

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
    act(warehouse, Selection(issue_type="duplicate_key"), "ignore", "known upstream quirk", actor="dana")
    # An unrelated rule changes the fingerprint, so the same file is loaded again.
    warehouse.add_rule(SOURCE, "registered_agent", "map_value", {"from": "x", "to": "y"}, "", None)
    assert not load_file(spec, landing, Q3, warehouse, tmp_path / "s", run_id="reload").skipped
    assert statuses(warehouse, "duplicate_key") == {"ignored": 6}
    kept = warehouse.query(
        "SELECT DISTINCT resolved_by, resolution_notes FROM {schema}.data_quality_issues WHERE issue_type = %s",
        ("duplicate_key",),
    )
    assert kept == [("dana", "known upstream quirk")], "who triaged, and why, survive the reload"


def test_a_fixed_dead_letter_never_overwrites_another_files_row(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    frame = pl.read_csv(landing / SOURCE / Q3, infer_schema=False).head(3)
    frame.write_csv(landing / SOURCE / "older.csv")
    # Three records rejected for their zips among a hundred good ones: within the zip pass rate,
    # so the newer version is published and its dead letters are worth retrying.
    rejected = frame.with_columns(pl.lit("AB123").alias("Home Office Zip"), pl.lit("DISSOLVED").alias("Status"))
    good = pl.concat([frame.head(1)] * 100).with_columns(
        pl.Series("Corp Number", [f"9{number:06d}" for number in range(100)])
    )
    pl.concat([rejected, good]).write_csv(landing / SOURCE / "newer.csv")
    load_file(spec, landing, "older.csv", warehouse, tmp_path / "s")
    load_file(spec, landing, "newer.csv", warehouse, tmp_path / "s")
    act(
        warehouse,
        Selection(partition_key="newer.csv", issue_type="invalid_zip_code"),
        "manual_fix",
        specs=[spec],
        map_to="01234",
    )
    result = reprocess(spec, warehouse, tmp_path)
    assert (result.attempted, result.reprocessed, result.updated) == (3, 0, 0)
    pending = warehouse.query("SELECT count(*), min(error_message) FROM {schema}.failed_records WHERE NOT reprocessed")
    assert pending[0][0] == 3 and "another file" in pending[0][1]


def test_auto_fix_marks_only_the_issues_its_rule_fixes(warehouse, specs, landing, tmp_path):
    spec = specs[SOURCE]
    first = load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    # Q3 has 12 four-digit zips (padding repairs them) and 4 like AB350 (nothing pads those).
    outcome = act(
        warehouse, Selection(issue_type="invalid_zip_code"), "auto_fix", "lost zeros", specs=[spec], pad_to_width=5
    )
    assert (outcome.issues, outcome.unfixed, len(outcome.rules)) == (12, 4, 1)
    assert outcome.message() == (
        "auto_fix: 12 issues fixed; 4 could not be fixed by padding to 5 and stay pending "
        f"(e.g. AB317, AB345, AB350); 1 rule created (rule {outcome.rules[0]})"
    )
    assert statuses(warehouse, "invalid_zip_code") == {"auto_fix": 12, "pending": 4}
    pending = warehouse.query(
        "SELECT invalid_value, fix_rule_id FROM {schema}.data_quality_issues "
        "WHERE issue_type = 'invalid_zip_code' AND resolution_status = 'pending' ORDER BY 1"
    )
    assert pending == [("AB317", None), ("AB345", None), ("AB350", None), ("AB658", None)]
    assert warehouse.query(
        "SELECT DISTINCT fix_rule_id FROM {schema}.data_quality_issues WHERE resolution_status = 'auto_fix'"
    ) == [(outcome.rules[0],)]

    # On the next load the rule pads the 12 zips before validation; the 4 still fail, still pending.
    second = load_file(spec, landing, Q3, warehouse, tmp_path / "s", run_id="after-rule")
    assert (second.records_failed, second.issues) == (first.records_failed, first.issues - 12)
    assert statuses(warehouse, "invalid_zip_code") == {"pending": 4}
    assert warehouse.query("SELECT count(*) FROM {schema}.applied_fixes")[0][0] == 12


@pytest.mark.parametrize(
    ("issue_type", "fix"),
    [
        ("invalid_zip_code", {"map_to": "ABCDE"}),  # the value mapped to breaks the zip pattern itself
        ("invalid_date", {"date_format": "%m/%d/%Y"}),  # 02/30/2020 is no date in that format either
        ("duplicate_key", {"map_to": "000001"}),  # duplicates are no value a rule can repair
    ],
)
def test_a_fix_that_repairs_nothing_changes_nothing(warehouse, specs, landing, tmp_path, issue_type, fix):
    load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    before = statuses(warehouse, issue_type)
    outcome = act(warehouse, Selection(issue_type=issue_type), "auto_fix", specs=[specs[SOURCE]], **fix)
    assert (outcome.issues, outcome.rules, outcome.unfixed) == (0, [], sum(before.values()))
    assert statuses(warehouse, issue_type) == before == {"pending": before["pending"]}
    assert warehouse.query("SELECT count(*) FROM {schema}.transformation_rules")[0][0] == 0


def test_map_to_fixes_each_value_with_a_rule_of_its_own(warehouse, specs, landing, tmp_path):
    load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    selection = Selection(issue_type="invalid_zip_code", severity="error")
    outcome = act(warehouse, selection, "auto_fix", specs=[specs[SOURCE]], map_to="02350")
    assert (outcome.issues, outcome.unfixed, len(outcome.rules)) == (4, 0, 4)
    assert warehouse.query(
        "SELECT invalid_value, fix_rule_id FROM {schema}.data_quality_issues WHERE resolution_status = 'auto_fix' "
        "ORDER BY fix_rule_id"
    ) == list(zip(["AB317", "AB345", "AB350", "AB658"], outcome.rules, strict=True))


def test_a_fix_needs_the_spec_of_its_source(warehouse, specs, landing, tmp_path):
    load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    with pytest.raises(ValueError, match="no spec for source business_registry"):
        act(warehouse, Selection(issue_type="invalid_zip_code"), "auto_fix", pad_to_width=5)
    assert statuses(warehouse, "invalid_zip_code") == {"pending": 16}


def test_issue_pages_cover_the_selection_once_in_a_stable_order(warehouse, specs, landing, tmp_path):
    load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    pages = [list_issues(warehouse, Selection(), page, 7) for page in (1, 2, 3, 4, 5)]
    assert [len(p.rows) for p in pages] == [7, 7, 7, 7, 2] and {p.total for p in pages} == {30}
    ids = [row["issue_id"] for p in pages for row in p.rows]
    all_ids = warehouse.query("SELECT CAST(issue_id AS VARCHAR) FROM {schema}.data_quality_issues")
    assert sorted(ids) == sorted(i for (i,) in all_ids)
    severities = [row["severity"] for p in pages for row in p.rows]
    assert severities == ["error"] * 12 + ["warning"] * 18, "errors first"
    errors = list_issues(warehouse, Selection(severity="error", field_name="home_office_zip"))
    assert errors.total == 4 and {row["invalid_value"] for row in errors.rows} == {"AB317", "AB345", "AB350", "AB658"}
    assert list_issues(warehouse, Selection(), 6, 7).rows == []


def test_summary_examples_are_distinct_values_in_plain_english(warehouse, specs, landing, tmp_path):
    load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    groups = {g.issue_type: g for g in summarize(warehouse, Selection(severity="error"))}
    # Three issues, one value: the examples show it once.
    assert (groups["invalid_date"].count, [v for _, v, _ in groups["invalid_date"].examples]) == (3, ["02/30/2020"])
    assert [v for _, v, _ in groups["invalid_zip_code"].examples] == ["AB350", "AB658", "AB345"]
    text = render(list(groups.values()))
    assert '000179: (no value) fails "a value is required"' in text
    assert "expected a value is required" not in text


def test_values_are_shown_on_one_line_and_cut_to_width():
    assert shown("12\n34\t5\x00") == "12\\n34\\t5\\x00"
    assert shown("Zürich " * 10, 12) == "Zürich Züri…"
    assert shown(None) == "(no value)"


def rules(store):
    return store.query(
        "SELECT rule_id, source_type, field_name, kind, params, enabled FROM {schema}.transformation_rules"
    )


def test_an_identical_rule_is_reused_and_enabled_again(warehouse):
    warehouse.migrate([])
    first = warehouse.add_rule(SOURCE, "home_office_zip", "pad_left", {"width": 5}, "lost zeros", "invalid_zip_code")
    # The same rule asked for in other words: a width given as text, the default fill spelled out.
    same = warehouse.add_rule(SOURCE, "home_office_zip", "pad_left", {"width": "5", "fill": "0"}, "", None)
    assert (first.outcome, same) == ("created", SavedRule(first.rule_id, "reused"))
    assert warehouse.set_rule_enabled(first.rule_id, False)
    again = warehouse.add_rule(SOURCE, "home_office_zip", "pad_left", {"width": 5}, "", None)
    assert again == SavedRule(first.rule_id, "re-enabled")
    assert [r.rule_id for r in warehouse.active_rules(SOURCE)] == [first.rule_id]
    other = warehouse.add_rule(SOURCE, "registered_agent_zip", "pad_left", {"width": 5}, "", None)
    assert other.outcome == "created" and len(rules(warehouse)) == 2, "another field is another rule"


def test_concurrent_identical_fixes_make_one_rule(warehouse):
    warehouse.migrate([])
    for width in (5, 9, 10):  # a few rounds, so the threads race on more than one insert
        start = threading.Barrier(4)

        def create(width=width, start=start):
            start.wait()
            return warehouse.add_rule(SOURCE, "home_office_zip", "pad_left", {"width": width}, "", None)

        with ThreadPoolExecutor(4) as pool:
            saved = list(pool.map(lambda _: create(), range(4)))
        assert len({s.rule_id for s in saved}) == 1
        assert sorted(s.outcome for s in saved) == ["created", "reused", "reused", "reused"]
    assert len(rules(warehouse)) == 3


def test_the_migration_merges_identical_rules_into_the_oldest(warehouse, monkeypatch):
    monkeypatch.setattr(base, "MIGRATIONS", MIGRATIONS[:4])
    warehouse.migrate([])
    insert = (
        "INSERT INTO {schema}.transformation_rules (source_type, field_name, kind, params, enabled, "
        "disabled_at) VALUES (%s, %s, %s, %s, %s, CASE WHEN %s THEN NULL ELSE now() END) RETURNING rule_id"
    )
    pad = '{"fill": "0", "width": 5}'
    made = [
        warehouse.query(insert, (SOURCE, field_name, "pad_left", pad, enabled, enabled))[0][0]
        for field_name, enabled in (
            ("home_office_zip", False),
            ("home_office_zip", True),
            ("home_office_zip", False),
            ("registered_agent_zip", False),
        )
    ]
    assert made == [1, 2, 3, 4]
    version = "(source_id, source_type, partition_key, file_hash"
    warehouse.query(
        f"INSERT INTO {{schema}}.data_quality_issues {version}, source_line_number, issue_type, severity, field_name, "
        "resolution_status, fix_rule_id) VALUES (1, %s, 'q3', 'h', 7, 'invalid_zip_code', 'error', "
        "'home_office_zip', 'auto_fix', 2)",
        (SOURCE,),
    )
    warehouse.query(
        f"INSERT INTO {{schema}}.applied_fixes {version}, rule_id, source_line_number, field_name, old_value, "
        "new_value) VALUES (2, %s, 'q4', 'g', 3, 9, 'home_office_zip', '2350', '02350')",
        (SOURCE,),
    )
    monkeypatch.setattr(base, "MIGRATIONS", MIGRATIONS)
    warehouse.migrate([])

    merged = sorted(rules(warehouse))
    assert merged == [
        (1, SOURCE, "home_office_zip", "pad_left", pad, True),
        (4, SOURCE, "registered_agent_zip", "pad_left", pad, False),
    ], "one rule each, enabled if any of its twins was"
    assert warehouse.query("SELECT fix_rule_id FROM {schema}.data_quality_issues") == [(1,)]
    assert warehouse.query("SELECT rule_id FROM {schema}.applied_fixes") == [(1,)]
    assert [(r.rule_id, r.fixed) for r in list_rules(warehouse)] == [(1, 2), (4, 0)]
    assert warehouse.add_rule(SOURCE, "home_office_zip", "pad_left", {"width": 5}, "", None).rule_id == 1
    new = warehouse.add_rule(SOURCE, "home_office_zip", "pad_left", {"width": 9}, "", None)
    assert new.outcome == "created" and new.rule_id > 4, "new rules keep drawing ids from the sequence"
