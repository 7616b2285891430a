"""`harmonizer dq`, run through the CLI's entry point on every warehouse, as a data steward would."""

import getpass
import json
import re
from collections.abc import Iterator

import pytest

from harmonizer_dagster.cli import main
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse
from harmonizer_dagster_tests.conftest import WAREHOUSES, drop_schemas, load_file, warehouse_url
from harmonizer_dagster_tests.test_dq_web import csrf, flashes, page_app

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"
Q4 = "registry_2026-Q4.csv.gz"


@pytest.fixture(params=WAREHOUSES)
def loaded(request, monkeypatch, specs, landing, tmp_path) -> Iterator[Warehouse]:
    """The Q3 registry sample loaded into the warehouse the CLI reads (its default schema)."""
    url = warehouse_url(request.param, tmp_path, request)
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", url)
    store = open_warehouse(url)
    load_file(specs[SOURCE], landing, Q3, store, tmp_path / "s")
    yield store
    if request.param == "postgres":
        drop_schemas(store)


def harmonizer(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def ids(store: Warehouse, condition: str = "TRUE") -> set[str]:
    rows = store.query(f"SELECT CAST(issue_id AS VARCHAR) FROM {{schema}}.data_quality_issues WHERE {condition}")
    return {issue_id for (issue_id,) in rows}


def test_list_pages_through_the_issues_by_id(loaded, capsys):
    everything = ids(loaded)
    pages = [harmonizer(capsys, "dq", "list", "--limit", "12", "--page", str(page)) for page in (1, 2, 3)]
    assert "showing 1-12 of 30; next: --page 2" in pages[0]
    assert "showing 13-24 of 30; next: --page 3" in pages[1]
    assert pages[2].rstrip().endswith("showing 25-30 of 30")
    shown = [{i for i in everything if i in page} for page in pages]
    assert [len(s) for s in shown] == [12, 12, 6] and set.union(*shown) == everything
    assert "Data Quality Issues (30 selected)" in pages[0] and "duplicate_key (6 issues)" in pages[0]
    assert 'fails "a value is required"' in pages[0] and "expected a value is required" not in pages[0]


def test_list_filters(loaded, capsys):
    out = harmonizer(capsys, "dq", "list", "--severity", "error", "--field", "home_office_zip", "--partition", Q3)
    wanted = ids(loaded, "severity = 'error' AND field_name = 'home_office_zip'")
    assert len(wanted) == 4 and {i for i in ids(loaded) if i in out} == wanted
    assert out.rstrip().endswith("showing 1-4 of 4")
    # Three issues share one value: the group's examples show it once, the table each issue.
    dates = harmonizer(capsys, "dq", "list", "--type", "invalid_date", "--source", SOURCE)
    assert (dates.count("'02/30/2020'"), dates.count("02/30/2020")) == (1, 4)
    assert "No issues match." in harmonizer(capsys, "dq", "list", "--source", "court_records")


def test_list_as_json_and_tsv(loaded, capsys):
    listing = json.loads(harmonizer(capsys, "dq", "list", "--format", "json", "--limit", "5", "--severity", "error"))
    assert (listing["total"], len(listing["issues"])) == (12, 5)
    assert {row["issue_id"] for row in listing["issues"]} <= ids(loaded, "severity = 'error'")
    lines = harmonizer(capsys, "dq", "list", "--format", "tsv", "--type", "missing_required_field").splitlines()
    assert lines[0].split("\t")[:3] == ["issue_id", "severity", "issue_type"]
    assert len(lines) == 6 and all(line.split("\t")[7] == "" for line in lines[1:]), "no value is an empty field"


def test_auto_fix_leaves_what_padding_cannot_fix_pending(loaded, capsys):
    out = harmonizer(
        capsys, "dq", "resolve", "--type", "invalid_zip_code", "--action", "auto_fix", "--pad-to-width", "5"
    )
    rule_id = loaded.query("SELECT rule_id FROM {schema}.transformation_rules")[0][0]
    assert out.strip() == (
        "auto_fix: 12 issues fixed; 4 could not be fixed by padding to 5 and stay pending "
        f"(e.g. AB317, AB345, AB350); 1 rule created (rule {rule_id})"
    )
    pending = harmonizer(capsys, "dq", "list", "--type", "invalid_zip_code")
    assert pending.rstrip().endswith("showing 1-4 of 4") and "AB350" in pending
    fixed = harmonizer(capsys, "dq", "list", "--status", "auto_fix")
    assert fixed.rstrip().endswith("showing 1-12 of 12") and "AB" not in fixed
    assert loaded.query(
        "SELECT DISTINCT resolved_by FROM {schema}.data_quality_issues WHERE resolution_status = 'auto_fix'"
    ) == [(getpass.getuser(),)], "the CLI records the OS user"
    rule = f'{rule_id} on {SOURCE}.home_office_zip: pad_left {{"fill": "0", "width": 5}} (12 values fixed)'
    listed = " ".join(harmonizer(capsys, "dq", "rules").split())
    assert listed == rule, "what the fix settled counts at once, before any load applies the rule"


def test_the_cli_then_the_page_fix_with_one_rule_and_count_what_it_fixed(loaded, capsys, specs, landing, tmp_path):
    load_file(specs[SOURCE], landing, Q4, loaded, tmp_path / "s")
    out = harmonizer(
        capsys, "dq", "resolve", "--type", "invalid_zip_code", "--partition", Q3, "--action", "auto_fix",
        "--pad-to-width", "5",
    )  # fmt: skip
    [(rule_id,)] = loaded.query("SELECT rule_id FROM {schema}.transformation_rules")
    assert out.strip().endswith(f"; 1 rule created (rule {rule_id})")
    assert "(12 values fixed)" in harmonizer(capsys, "dq", "rules")

    client = page_app(loaded, tmp_path)
    page = client.get("/issues").text
    fixed = client.post(
        "/issues/action",
        data={"csrf": csrf(page), "action": "auto_fix", "source": SOURCE, "type": "invalid_zip_code", "fix": "pad",
              "value": "5"},
    )  # fmt: skip
    assert flashes(fixed.text) == [
        "auto_fix: 12 issues fixed; 8 could not be fixed by padding to 5 and stay pending (e.g. AB192, AB317, AB324); "
        f"no rule created; 1 existing rule reused (rule {rule_id})"
    ]
    assert loaded.query("SELECT rule_id FROM {schema}.transformation_rules") == [(rule_id,)]
    assert f"{rule_id} on  {SOURCE}.home_office_zip" in harmonizer(capsys, "dq", "rules")
    assert "(24 values fixed)" in harmonizer(capsys, "dq", "rules")
    assert re.search(r'<td class="n">24</td>', client.get("/rules").text), "the rules page says the same"

    # Reloading both files rewrites the values with the rule: the same 24, not lost nor doubled.
    for key in (Q3, Q4):
        assert not load_file(specs[SOURCE], landing, key, loaded, tmp_path / "s", run_id="with-rule").skipped
    assert loaded.query("SELECT count(*) FROM {schema}.applied_fixes") == [(24,)]
    assert "(24 values fixed)" in harmonizer(capsys, "dq", "rules")


def test_a_disabled_identical_rule_is_enabled_again_by_the_page(loaded, capsys, specs, landing, tmp_path):
    harmonizer(capsys, "dq", "resolve", "--type", "invalid_zip_code", "--action", "auto_fix", "--pad-to-width", "5")
    [(rule_id,)] = loaded.query("SELECT rule_id FROM {schema}.transformation_rules")
    assert harmonizer(capsys, "dq", "disable-rule", str(rule_id)).strip() == f"rule {rule_id} disabled"
    load_file(specs[SOURCE], landing, Q4, loaded, tmp_path / "s")  # loaded without the rule: its zips are issues
    client = page_app(loaded, tmp_path)
    fixed = client.post(
        "/issues/action",
        data={"csrf": csrf(client.get("/issues").text), "action": "auto_fix", "source": SOURCE,
              "partition": Q4, "type": "invalid_zip_code", "fix": "pad", "value": "5"},
    )  # fmt: skip
    assert flashes(fixed.text)[0].endswith(f"; no rule created; 1 existing rule reused (rule {rule_id} enabled again)")
    assert harmonizer(capsys, "dq", "rules").split()[:2] == [str(rule_id), "on"]
    assert [r.rule_id for r in loaded.active_rules(SOURCE)] == [rule_id]


def test_counts_are_singular_or_plural_and_a_page_past_the_end_says_so(loaded, capsys):
    past = harmonizer(capsys, "dq", "list", "--severity", "error", "--field", "home_office_zip", "--page", "2")
    assert past.rstrip().endswith("page 2 of 1: past the end of the 4 issues; the last page is --page 1")
    assert "invalid_zip_code (4 issues)" in past
    (one,) = sorted(ids(loaded, "issue_type = 'invalid_date'"))[:1]
    single = harmonizer(capsys, "dq", "list", "--id", one)
    assert "(1 issue)" in single and "(1 issues)" not in single
    assert single.rstrip().endswith("page 1 of 1: showing 1-1 of 1")
    paged = harmonizer(capsys, "dq", "list", "--severity", "error", "--limit", "5", "--page", "2")
    assert paged.rstrip().endswith("page 2 of 3: showing 6-10 of 12; next: --page 3")
    listing = json.loads(harmonizer(capsys, "dq", "list", "--format", "json", "--limit", "5", "--page", "9"))
    assert (listing["page"], listing["pages"], listing["total"], listing["issues"]) == (9, 6, 30, [])
    out = harmonizer(capsys, "dq", "resolve", "--id", one, "--action", "ignore")
    assert out.strip() == "ignore: 1 issue updated"


def test_a_fix_on_a_warehouse_an_older_version_wrote_brings_it_up_to_date(loaded, capsys):
    # As a warehouse written before rules were unique: no index, migration 5 not applied.
    loaded.query("DROP INDEX {schema}.transformation_rules_identity_idx")
    loaded.query("DELETE FROM {schema}.schema_migrations WHERE version = 5")
    out = harmonizer(
        capsys, "dq", "resolve", "--type", "invalid_zip_code", "--action", "auto_fix", "--pad-to-width", "5"
    )
    assert out.strip().endswith("; 1 rule created (rule 1)")
    assert loaded.query("SELECT version FROM {schema}.schema_migrations WHERE version = 5") == [(5,)]


def test_a_steward_lists_shows_and_releases_a_held_version_from_the_terminal(loaded, landing, capsys, tmp_path, specs):
    from harmonizer_dagster_tests.test_write_audit_publish import cities, land_held_file

    keys = ["000001", "000002", "000003", "000004"]
    land_held_file(landing, "held.csv", keys, "NOWHERE")
    load_file(specs[SOURCE], landing, "held.csv", loaded, tmp_path / "s")
    before = cities(loaded, keys)

    listed = harmonizer(capsys, "held", "list")
    (source_id,) = [line.split()[0] for line in listed.splitlines() if "held.csv" in line]
    assert "rejected_rate" in listed and "1 held version" in listed
    shown = harmonizer(capsys, "held", "show", source_id)
    assert "would write 4 rows: 0 new, 4 changed" in shown
    assert f"changed corp_number=000001  home_office_city: {before['000001']} -> NOWHERE" in shown
    summary = harmonizer(capsys, "summary")
    assert "1 version held by failed blocking checks" in summary and "held.csv (id " in summary
    assert "rejected_rate" in summary
    status = harmonizer(capsys, "status")
    assert f"held: business_registry/held.csv (id {source_id}), failed rejected_rate" in status
    assert main(["held", "release", source_id, "--reason", " "]) == 1
    assert "needs who decides and why" in capsys.readouterr().err

    released = harmonizer(capsys, "held", "release", source_id, "--reason", "expected this quarter", "--by", "dana")
    assert "released business_registry/held.csv: 0 inserted, 4 updated, 0 unchanged" in released
    assert cities(loaded, keys) == dict.fromkeys(keys, "NOWHERE")
    assert loaded.query("SELECT decided_by, reason FROM {schema}.version_decisions") == [
        ("dana", "expected this quarter")
    ]
    assert "0 held versions" in harmonizer(capsys, "held", "list")
