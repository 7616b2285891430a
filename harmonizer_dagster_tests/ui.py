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
    "business_registry_harmonize",
    "business_registry_upsert",
]


# Dagster's UI opens dialogs of its own that come and go with the date, the instance and the
# browser's storage (the community/newsletter prompt, announcements). Any of them would
# intercept the clicks below, so every open overlay is dismissed before each action.
OVERLAY = ".bp5-overlay.bp5-overlay-open"
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
    page.add_locator_handler(page.locator(OVERLAY).first, lambda: dismiss_overlays(page))
    return page


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_timeout(3000)
    # An auto-waiting assertion runs the handler first, so what follows sees the page itself.
    expect(page.locator(OVERLAY)).to_have_count(0)


def check_source_pages(webserver: str, location: str, screenshot_prefix: str) -> None:
    """The registry asset's four ops, the loaded partition's metadata, and its checks."""
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = new_page(browser)

        open_page(page, f"{webserver}/locations/{location}/jobs/load_business_registry")
        page.get_by_text("View as Asset Graph").click()
        page.get_by_text("Explode graphs").click()
        page.wait_for_timeout(2000)
        assert [op for op in OPS if op in page.content()] == OPS
        page.screenshot(path=str(ARTIFACTS / f"{screenshot_prefix}-ops.png"))

        open_page(page, f"{webserver}/assets/business_registry?view=partitions&partition={PARTITION}")
        text = page.inner_text("body")
        for shown in ("records_in_file", "1006", "inserted", "rejected", "file_hash", "dagster/row_count"):
            assert shown in text, shown
        page.screenshot(path=str(ARTIFACTS / f"{screenshot_prefix}-partition.png"), full_page=True)

        open_page(page, f"{webserver}/assets/business_registry?view=checks")
        text = page.inner_text("body")
        for check in ("row_count_reconciliation", "natural_key_unique", "home_office_zip_pass_rate"):
            assert check in text, check
        page.screenshot(path=str(ARTIFACTS / f"{screenshot_prefix}-checks.png"))
        browser.close()
