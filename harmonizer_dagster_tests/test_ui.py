"""The UI a user sees, in a real headless Chromium (Debian's, driven by Playwright; no browser
download): the source asset's four ops, and a loaded partition's metadata and checks.
Screenshots are kept in test-artifacts/."""

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from playwright.sync_api import sync_playwright

from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster_tests.fleet import free_port, wait_for

REPO = Path(__file__).parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]
Q3 = "registry_2026-Q3.csv"
OPS = [
    "business_registry_hash",
    "business_registry_validate",
    "business_registry_harmonize",
    "business_registry_upsert",
]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def webserver(environment, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HARMONIZER_AUTOMATION", "off")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("business_registry_files", [Q3])
        job = build_definitions().resolve_job_def("load_business_registry")
        assert job.execute_in_process(instance=instance, partition_key=Q3).success
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-m",
            "harmonizer_dagster",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=dict(os.environ),
        cwd=tmp_path,
        stdout=(tmp_path / "web.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}/server_info"), 120, "the webserver")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_timeout(3000)
    skip = page.get_by_role("button", name="Skip")  # the first-visit newsletter prompt
    if skip.count():
        skip.click()


def test_the_ui_shows_the_four_ops_and_a_partitions_metadata_and_checks(webserver):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        open_page(page, f"{webserver}/locations/harmonizer_dagster/jobs/load_business_registry")
        page.get_by_text("View as Asset Graph").click()
        page.get_by_text("Explode graphs").click()
        page.wait_for_timeout(2000)
        assert [op for op in OPS if op in page.content()] == OPS
        page.screenshot(path=str(ARTIFACTS / "ui-ops.png"))

        open_page(page, f"{webserver}/assets/business_registry?view=partitions&partition={Q3}")
        text = page.inner_text("body")
        for shown in ("records_in_file", "1006", "inserted", "rejected", "file_hash", "dagster/row_count"):
            assert shown in text, shown
        page.screenshot(path=str(ARTIFACTS / "ui-partition.png"), full_page=True)

        open_page(page, f"{webserver}/assets/business_registry?view=checks")
        text = page.inner_text("body")
        for check in ("row_count_reconciliation", "natural_key_unique", "home_office_zip_pass_rate"):
            assert check in text, check
        page.screenshot(path=str(ARTIFACTS / "ui-checks.png"))
        browser.close()
