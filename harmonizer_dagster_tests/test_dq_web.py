"""The triage page (harmonizer_dagster.web) through Starlette's test client, on every warehouse:
the views, the actions and who took them, CSRF, escaping, and a 100k-issue file."""

from __future__ import annotations

import html
import re

import pytest
from starlette.testclient import TestClient

from harmonizer_dagster.core.quality import checks_for, run_check
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.web.app import Settings, create_app
from harmonizer_dagster_tests.conftest import load_file
from harmonizer_dagster_tests.fleet import free_port

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"
STEWARD = {"X-Forwarded-User": "dana.steward"}


def page_app(store: Warehouse, tmp_path, **settings) -> TestClient:
    """The page under the /dq prefix the proxy serves it at; Dagster on a port nobody listens on."""
    defaults = {
        "warehouse_url": "postgresql://harmonizer:hunter2hunter2@db.lan:5432/warehouse",
        "schema": store.schema_name,
        "dagster_url": f"http://127.0.0.1:{free_port()}",
        "staging_dir": tmp_path / "staging",
    }
    return TestClient(create_app(Settings(**defaults | settings), store), root_path="/dq", headers=STEWARD)


@pytest.fixture
def loaded(warehouse, specs, landing, tmp_path) -> tuple[Warehouse, TestClient]:
    load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "s")
    return warehouse, page_app(warehouse, tmp_path)


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def flashes(page: str) -> list[str]:
    return [
        " ".join(html.unescape(re.sub(r"<[^>]+>", " ", m)).split())
        for m in re.findall(r'class="flash[^"]*"[^>]*>(.*?)</p>', page, re.S)
    ]


def pending_total(page: str) -> int:
    return int(re.search(r'id="total">([\d,]+)<', page).group(1).replace(",", ""))


def group_counts(page: str) -> dict[str, int]:
    return {
        kind: int(count)
        for kind, count in re.findall(
            r'<section class="group" data-type="([^"]+)">\s*<h2>.*?class="count">(\d+)<', page, re.S
        )
    }


def statuses(store: Warehouse, issue_type: str) -> dict[tuple[str, str | None], int]:
    rows = store.query(
        "SELECT resolution_status, resolved_by, count(*) FROM {schema}.data_quality_issues WHERE issue_type = %s "
        "GROUP BY 1, 2",
        (issue_type,),
    )
    return {(status, by): int(count) for status, by, count in rows}


def test_the_views_show_sources_groups_records_rules_and_dead_letters(loaded):
    _, client = loaded
    sources = client.get("/")
    assert sources.status_code == 200
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", sources.text)).split())
    assert f"{SOURCE} 2026-Q3 {Q3} completed 1006 988 12 6" in text
    assert 'href="/dq/issues?source=business_registry">30<' in sources.text
    assert 'href="http://127.0.0.1:' in sources.text and "/assets/business_registry" in sources.text
    assert "hunter2hunter2" not in sources.text and "harmonizer:***@db.lan" in sources.text, "the password is redacted"

    issues = client.get("/issues")
    assert pending_total(issues.text) == 30
    groups = group_counts(issues.text)
    assert (groups["invalid_zip_code"], groups["duplicate_key"], groups["invalid_date"]) == (16, 6, 3)
    assert sum(groups.values()) == 30
    assert ">AB350<" in issues.text, "examples"
    filtered = client.get("/issues", params={"severity": "error", "field": "home_office_zip", "partition": Q3})
    assert pending_total(filtered.text) == 4 and "showing 1-4 of 4" in filtered.text
    assert (
        "Review" in issues.text
        and 'href="/dq/issues?source=business_registry&amp;status=pending&amp;type=invalid_zip_code#list"'
        in issues.text
    )

    issue_id = re.search(r'href="/dq/issues/([0-9a-f-]{36})"', filtered.text).group(1)
    record = client.get(f"/issues/{issue_id}")
    assert record.status_code == 200 and "from failed_records" in record.text
    assert "Home Office Zip" in record.text and "5 digits or ZIP+4" in record.text
    assert client.get("/issues/00000000-0000-0000-0000-000000000000").status_code == 404
    assert "No rule learned yet." in client.get("/rules").text
    dead = client.get("/dead-letters", params={"source": SOURCE})
    assert '<span class="count">12</span>' in dead.text and "Reprocess business_registry" in dead.text


def test_bulk_fix_ignore_all_and_a_manual_fix_are_recorded_with_who_acted(loaded, specs, landing, tmp_path):
    store, client = loaded
    token = csrf(client.get("/issues").text)
    fixed = client.post(
        "/issues/action",
        data={
            "csrf": token,
            "action": "auto_fix",
            "source": SOURCE,
            "type": "invalid_zip_code",
            "fix": "pad",
            "value": "5",
        },
    )
    assert fixed.url.path == "/dq/issues"
    assert flashes(fixed.text)[0].startswith(
        "auto_fix: 12 issues fixed; 4 could not be fixed by padding to 5 and stay pending (e.g. AB317, AB345, AB350)"
    )
    assert pending_total(fixed.text) == 18
    assert statuses(store, "invalid_zip_code") == {("auto_fix", "dana.steward"): 12, ("pending", None): 4}
    assert "Re-materialize in Dagster" in fixed.text and f"{SOURCE}: {Q3}" in fixed.text
    unreachable = client.post("/issues/rematerialize", data={"csrf": token})
    (message,) = flashes(unreachable.text)
    assert message.startswith("cannot reach the Dagster webserver at http://127.0.0.1:")
    assert "HARMONIZER_DAGSTER_URL" in message and "Re-materialize in Dagster" in unreachable.text, "try again later"

    ignored = client.post(
        "/issues/action",
        data={"csrf": token, "action": "ignore", "source": SOURCE, "type": "duplicate_key", "note": "known quirk"},
    )
    assert flashes(ignored.text) == ["ignore: 6 issues updated"] and pending_total(ignored.text) == 12
    assert statuses(store, "duplicate_key") == {("ignored", "dana.steward"): 6}

    one = store.query(
        "SELECT CAST(issue_id AS VARCHAR) FROM {schema}.data_quality_issues WHERE invalid_value = 'AB350'"
    )[0][0]
    manual = client.post(f"/issues/{one}/action", data={"csrf": token, "action": "manual_fix", "value": "02350"})
    assert manual.url.path == f"/dq/issues/{one}" and flashes(manual.text)[0].startswith("manual_fix: 1 issue fixed")
    assert "manual_fix" in manual.text and "dana.steward" in manual.text
    wrong = client.post(
        "/issues/action",
        data={
            "csrf": token,
            "action": "auto_fix",
            "source": SOURCE,
            "type": "invalid_date",
            "fix": "pad",
            "value": "x",
        },
    )
    assert flashes(wrong.text) == ["pad to width needs a whole number, e.g. 5"]

    reprocessed = client.post("/dead-letters/reprocess", data={"csrf": token, "source": SOURCE})
    assert flashes(reprocessed.text)[0].startswith(f"{SOURCE}: 12 records retried, 1 now loaded")

    # The learned rules apply on the next load: the rules page counts the values they fixed.
    load_file(specs[SOURCE], landing, Q3, store, tmp_path / "s", run_id="after-rules")
    rules = client.get("/rules").text
    counts = [int(n) for n in re.findall(r'<td class="n">(\d+)</td>\s*<td><form', rules)]
    assert counts == [12, 1], "the padding rule fixed 12 values, the manual fix its one"
    disable = client.post("/rules/1/enabled", data={"csrf": token, "enabled": "0"})
    rule_ids = [
        rule_id for (rule_id,) in store.query("SELECT rule_id FROM {schema}.transformation_rules WHERE enabled")
    ]
    assert flashes(disable.text)[0].startswith("rule 1 disabled") and 1 not in rule_ids


def test_every_form_needs_the_sessions_token(loaded, tmp_path):
    store, client = loaded
    selected = {"action": "ignore", "source": SOURCE, "type": "duplicate_key"}
    for token in ({}, {"csrf": "forged"}):
        assert client.post("/issues/action", data=selected | token).status_code == 403
    # A token from another session (another browser) is refused as well.
    stranger = page_app(store, tmp_path)
    assert (
        stranger.post("/issues/action", data=selected | {"csrf": csrf(client.get("/issues").text)}).status_code == 403
    )
    assert statuses(store, "duplicate_key") == {("pending", None): 6}


def test_hostile_values_are_escaped_and_huge_ones_cut(warehouse, specs, tmp_path):
    warehouse.migrate([specs[SOURCE]])
    script = "<script>alert('x')</script>"
    for value, issue_type in ((script, "<b>bold</b>_type"), ("9" * 10_000_000, "huge_value")):
        warehouse.query(
            "INSERT INTO {schema}.data_quality_issues (source_id, source_type, partition_key, file_hash, "
            "source_line_number, issue_type, severity, field_name, invalid_value, expected_format) "
            "VALUES (1, 'business_registry', 'x.csv', 'h', 1, %s, 'error', 'legal_name', %s, %s)",
            (issue_type, value, script),
        )
    client = page_app(warehouse, tmp_path)
    page = client.get("/issues")
    assert "<script" not in page.text and "<b>bold" not in page.text
    assert html.escape(script, quote=False) in page.text.replace("&#39;", "'")
    assert len(page.text) < 200_000, "a 10 MB value is cut in the listing"
    assert "more characters)" in page.text
    issue_id = re.search(r'href="/dq/issues/([0-9a-f-]{36})"', page.text).group(1)
    record = client.get(f"/issues/{issue_id}")
    assert record.status_code == 200 and "<script" not in record.text and len(record.text) < 200_000


def test_a_100k_issue_file_renders_its_counts(warehouse, tmp_path):
    warehouse.migrate([])
    warehouse.query(
        "INSERT INTO {schema}.data_quality_issues (source_id, source_type, partition_key, file_hash, "
        "source_line_number, source_record_id, issue_type, severity, field_name, invalid_value, expected_format) "
        "SELECT 1, 'business_registry', 'big.csv', 'h', n, CAST(n AS VARCHAR), "
        "CASE WHEN n % 10 = 0 THEN 'invalid_date' ELSE 'invalid_zip_code' END, "
        "CASE WHEN n % 4 = 0 THEN 'error' ELSE 'warning' END, 'home_office_zip', CAST(n % 977 AS VARCHAR), "
        "'5 digits' FROM generate_series(1, 100000) AS g(n)"
    )
    client = page_app(warehouse, tmp_path)
    page = client.get("/issues").text
    assert pending_total(page) == 100_000
    assert group_counts(page) == {"invalid_zip_code": 90_000, "invalid_date": 10_000}
    assert "showing 1-50 of 100,000" in page
    last = client.get("/issues", params={"type": "invalid_date", "severity": "error", "page": 100}).text
    assert pending_total(last) == 5_000 and "showing 4,951-5,000 of 5,000" in last


def page_text(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


NOT_EVALUATED = "\N{EN DASH}"


def checks_passed(client: TestClient) -> str:
    found = re.search(rf"completed( \d+){{4}} (\S+ \(\d+%\)|{NOT_EVALUATED})", page_text(client.get("/").text))
    return found.group(2)


def test_the_sources_page_counts_the_latest_evaluation_of_each_check_of_the_latest_version(loaded, specs, landing):
    store, client = loaded
    spec = specs[SOURCE]
    checks = checks_for(spec)
    assert checks_passed(client) == f"{len(checks)}/{len(checks)} (100%)", "the audit evaluated every check"
    for run in ("first", "second"):  # two runs of the same version
        evaluations = [run_check(store, spec, check, Q3, run).passed for check in checks]
    assert checks_passed(client) == f"{sum(evaluations)}/{len(checks)} ({sum(evaluations) / len(checks):.0%})"

    load_file(spec, landing, "registry_2026-Q4.csv.gz", store, landing.parent / "s")
    audited = store.query(
        "SELECT passed FROM {schema}.data_quality_checks WHERE partition_key = %s", ("registry_2026-Q4.csv.gz",)
    )
    assert len(audited) == len(checks)
    newer = sum(passed for (passed,) in audited)
    assert checks_passed(client) == f"{newer}/{len(checks)} ({newer / len(checks):.0%})", (
        "the newer version's own audit counts: none of the older one's evaluations"
    )


def test_a_page_past_the_end_says_so(loaded):
    _, client = loaded
    past = page_text(client.get("/issues", params={"page": 3}).text)
    assert "page 3 of 1: past the end of the 30 issues. last page" in past
    assert 'href="/dq/issues?page=1">last page<' in client.get("/issues", params={"page": 3}).text
    one = page_text(client.get("/issues", params={"type": "invalid_date", "field": "incorporation_date"}).text)
    assert "page 1 of 1: showing 1-3 of 3 issues" in one
    dead = page_text(client.get("/dead-letters", params={"page": 2}).text)
    assert "page 2 of 1: past the end of the 12 records." in dead
