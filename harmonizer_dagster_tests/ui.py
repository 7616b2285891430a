"""What a user sees in the UI, checked in a real headless Chromium (Debian's, driven by
Playwright with its executable path; no browser is ever downloaded). Screenshots are kept in
test-artifacts/."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from playwright.sync_api import Browser, Page, expect, sync_playwright

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling out, which a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]
PARTITION = "registry_2026-Q3.csv"
OPS = [
    "business_registry_hash",
    "business_registry_validate",
    "business_registry_deduplicate",
    "business_registry_stage",
    "business_registry_audit",
    "business_registry_publish",
]


# Dagster's UI opens dialogs of its own that come and go with the date, the instance and the
# browser's storage (the community/newsletter prompt, announcements). Any of them would
# intercept the clicks below, so every open overlay is dismissed before each action.
OVERLAY = ".bp5-overlay.bp5-overlay-open"
# Every wait is for the state a test asserts, never for a time; on a busy machine the UI may take
# long to show it, so the bound is generous.
UI_TIMEOUT_MS = 90_000
expect.set_options(timeout=UI_TIMEOUT_MS)
DISMISS_BUTTONS = re.compile(r"^(Skip|Dismiss|Close|Got it|Not now|No thanks|Maybe later|Done)$", re.IGNORECASE)


def dismiss_overlays(page: Page) -> None:
    """Closes whatever dialog is open: its own dismiss button when it has one, else Escape."""
    dialog = page.locator(OVERLAY).last
    for button in (dialog.get_by_role("button", name=DISMISS_BUTTONS), dialog.locator(".bp5-dialog-close-button")):
        if button.count():
            button.first.click()
            return
    page.keyboard.press("Escape")


def new_page(browser: Browser) -> Page:
    # No storage is pre-seeded: a fresh instance shows the community prompt, so every run
    # proves that the handler gets such dialogs out of the way.
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.add_locator_handler(page.locator(OVERLAY).first, lambda: dismiss_overlays(page))
    return page


def shows(page: Page, *texts: str) -> None:
    """Waits until the page shows every text: the UI fills its panes in after the page loads."""
    body = page.locator("body")
    for text in texts:
        # An auto-waiting assertion runs the overlay handler first, so it sees the page itself.
        expect(body).to_contain_text(text)


def check_source_pages(webserver: str, location: str, screenshot_prefix: str) -> None:
    """The registry asset's four ops, the loaded partition's metadata, and its checks."""
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = new_page(browser)

        page.goto(f"{webserver}/locations/{location}/jobs/load_business_registry")
        page.get_by_text("View as Asset Graph").click()
        page.get_by_text("Explode graphs").click()
        shows(page, *OPS)
        page.screenshot(path=str(ARTIFACTS / f"{screenshot_prefix}-ops.png"))

        page.goto(f"{webserver}/assets/business_registry?view=partitions&partition={PARTITION}")
        shows(page, "records_in_file", "1006", "inserted", "rejected", "file_hash", "dagster/row_count")
        page.screenshot(path=str(ARTIFACTS / f"{screenshot_prefix}-partition.png"), full_page=True)

        page.goto(f"{webserver}/assets/business_registry?view=checks")
        shows(page, "row_count_reconciliation", "natural_key_unique", "home_office_zip_pass_rate")
        page.screenshot(path=str(ARTIFACTS / f"{screenshot_prefix}-checks.png"))
        browser.close()


def check_range_run(webserver: str, run_id: str, partitions: list[str], screenshot_prefix: str) -> None:
    """A backfill's run of a range of files: its timeline shows every step, each having done
    its work, and each file of the range is a partition with its own figures and checks."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = new_page(browser)
        page.goto(f"{webserver}/runs/{run_id}")
        shows(page, *OPS, "Success")
        page.screenshot(path=str(ARTIFACTS / f"{screenshot_prefix}-range-run.png"), full_page=True)
        for partition in partitions:
            page.goto(f"{webserver}/assets/business_registry?view=partitions&partition={partition}")
            shows(page, "records_in_file", "file_hash")
        # The blocking check's history has an evaluation of each file of the range.
        page.goto(f"{webserver}/assets/business_registry?view=checks")
        page.get_by_text("blocking_checks").first.click()
        page.get_by_text("Execution history").click()
        shows(page, *partitions)
        page.screenshot(path=str(ARTIFACTS / f"{screenshot_prefix}-range-checks.png"), full_page=True)
        browser.close()
