"""The triage workflow in Debian's headless Chromium, against `harmonizer dq serve` and a real
Dagster webserver: bulk fix, ignore all, a manual fix, then the re-materialization the page
launches through GraphQL, until the fixed rows are in the warehouse (DuckDB; the same actions
on PostgreSQL are in test_dq_web). Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import expect, sync_playwright

from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster_tests.conftest import load_file
from harmonizer_dagster_tests.fleet import answers, free_port, wait_for
from harmonizer_dagster_tests.ui import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PARTITION, new_page

BIN = Path(sys.executable).parent
SOURCE = "business_registry"
# Runs start at once from the webserver (no daemon in this test); sensors and schedules stay off.
INSTANCE = """run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""


def _serve(command: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        env=dict(os.environ),
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def servers(environment, monkeypatch, tmp_path):
    """A Dagster webserver over a fresh instance with the Q3 partition registered, and the
    triage page pointed at it; both over the environment's DuckDB warehouse."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HARMONIZER_AUTOMATION", "off")
    dagster_port, page_port = free_port(), free_port()
    monkeypatch.setenv("HARMONIZER_DAGSTER_URL", f"http://127.0.0.1:{dagster_port}")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(f"{SOURCE}_files", [PARTITION])
        processes = [
            _serve(
                [
                    str(BIN / "dagster-webserver"),
                    "-m",
                    "harmonizer_dagster",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(dagster_port),
                ],
                tmp_path / "dagster.log",
                tmp_path,
            ),
            _serve([str(BIN / "harmonizer"), "dq", "serve", "--port", str(page_port)], tmp_path / "dq.log", tmp_path),
        ]
        try:
            wait_for(lambda: answers(f"http://127.0.0.1:{page_port}/"), 60, "the triage page")
            wait_for(lambda: answers(f"http://127.0.0.1:{dagster_port}/server_info"), 120, "the Dagster webserver")
            yield f"http://127.0.0.1:{page_port}", instance
        finally:
            for process in processes:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def shows_total(page, count: int) -> None:
    """Waits until the page's issue count is count (a fix or a filter reloads the page)."""
    expect(page.locator("#total")).to_have_text(f"{count:,}")


def test_a_steward_fixes_ignores_and_re_materializes_from_the_page(servers_loaded):
    page_url, instance, store = servers_loaded
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = new_page(browser)
        page.set_viewport_size({"width": 1280, "height": 900})

        page.goto(f"{page_url}/issues")
        shows_total(page, 30)
        zips = page.locator("section.group[data-type=invalid_zip_code]")
        expect(zips.locator(".count").first).to_have_text("16")
        page.screenshot(path=str(ARTIFACTS / "dq-grouped.png"))

        zips.get_by_text("Bulk fix").click()
        zips.get_by_label("fix", exact=True).select_option("pad")
        zips.get_by_label("fix value").fill("5")
        zips.get_by_role("button", name="Apply fix").click()
        expect(page.locator(".flash")).to_contain_text(
            "auto_fix: 12 issues fixed; 4 could not be fixed by padding to 5 and stay pending"
        )
        shows_total(page, 18)
        expect(page.get_by_role("button", name="Re-materialize in Dagster")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "dq-bulk-fix.png"))

        page.locator("section.group[data-type=duplicate_key]").get_by_role("button", name="Ignore all").click()
        expect(page.locator(".flash")).to_have_text("ignore: 6 issues updated")
        shows_total(page, 12)

        page.locator("section.group[data-type=invalid_zip_code]").get_by_role("link", name="Review").click()
        shows_total(page, 4)
        page.locator("table.issues tr", has_text="AB350").get_by_role("link", name="record").click()
        expect(page.locator("table.record")).to_contain_text("AB350")
        page.get_by_label("Corrected home_office_zip").fill("02350")
        page.get_by_role("button", name="Save fix").click()
        expect(page.locator(".flash")).to_contain_text("manual_fix: 1 issue fixed")
        page.screenshot(path=str(ARTIFACTS / "dq-record.png"), full_page=True)

        page.goto(f"{page_url}/issues")
        page.get_by_role("button", name="Re-materialize in Dagster").click()
        expect(page.locator(".flash")).to_contain_text(f"{SOURCE}: 1 run launched")
        run_link = page.locator(".flash a").first.get_attribute("href")
        run_id = re.search(r"/runs/([0-9a-f-]{36})$", run_link).group(1)

        run = wait_for(
            lambda: (r := instance.get_run_by_id(run_id)) and r.is_finished and r, 240, "the re-materialization run"
        )
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == PARTITION
        # The padding rule and the manual fix were applied by the load: the rejected record is in.
        assert store.query("SELECT count(*) FROM {schema}.applied_fixes")[0][0] == 13
        assert store.query("SELECT home_office_zip FROM {schema}.business_registry WHERE corp_number = '000043'") == [
            ("02350",)
        ]
        assert store.query(
            "SELECT resolution_status, count(*) FROM {schema}.data_quality_issues "
            "WHERE issue_type = 'invalid_zip_code' GROUP BY 1"
        ) == [("pending", 3)], "the fixed values raise no issue any more"

        hostile = "<script>window.hacked = 1</script>"
        store.query(
            "INSERT INTO {schema}.data_quality_issues (source_id, source_type, partition_key, file_hash, "
            "issue_type, severity, field_name, invalid_value) VALUES (1, %s, 'hostile.csv', 'h', 'hostile', "
            "'warning', 'legal_name', %s)",
            (SOURCE, hostile),
        )
        page.goto(f"{page_url}/issues?partition=hostile.csv")
        expect(page.locator("table.issues")).to_contain_text(hostile)
        assert page.locator("script").count() == 0 and page.evaluate("window.hacked") is None
        page.goto(f"{page_url}/rules")
        expect(page.locator("table")).to_contain_text("pad_left")
        page.screenshot(path=str(ARTIFACTS / "dq-rules.png"))
        browser.close()


@pytest.fixture
def servers_loaded(specs, landing, tmp_path, servers):
    page_url, instance = servers
    store = open_warehouse(os.environ["HARMONIZER_WAREHOUSE_URL"])
    load_file(specs[SOURCE], landing, PARTITION, store, tmp_path / "s")
    return page_url, instance, store
