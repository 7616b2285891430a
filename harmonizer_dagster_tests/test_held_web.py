"""Held versions on the triage page, on every warehouse: a version a blocking check held is
listed with what publishing it would change, and a steward releases or discards it, giving why."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster_tests.conftest import SAMPLE, land, load_file, registry_rows
from harmonizer_dagster_tests.test_dq_web import Q3, SOURCE, csrf, flashes, page_app, page_text

HELD_FILE = "registry_2027-Q1.csv"
# Keys of the sample, each on one clean line, whose city the held file changes.
MOVED = ("000001", "000002", "000003", "000004")
NEW_CITY = "SPRINGFIELD"
REASON = "the registry confirmed the moves; the nameless records are resent next quarter"


@dataclass(frozen=True)
class HeldFile:
    store: Warehouse
    client: TestClient
    spec: SourceSpec
    source_id: int
    rows_before: list[tuple]
    cities_before: dict[str, str]


def crafted_file() -> bytes:
    """Ten records: four move keys already loaded to another city, six have no legal name. Six
    rejected of ten is over the spec's max_rejected_rate (50%): a blocking check fails."""
    with SAMPLE.open(newline="") as sample:
        reader = csv.DictReader(sample)
        lines = {row["Corp Number"]: row for row in reader if row["Corp Number"] in MOVED}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reader.fieldnames, lineterminator="\n")
    writer.writeheader()
    for key in MOVED:
        writer.writerow(lines[key] | {"Home Office City": NEW_CITY.title()})
    for n in range(6):
        writer.writerow(lines[MOVED[0]] | {"Corp Number": f"99000{n}", "Legal Name": ""})
    return out.getvalue().encode()


def cities(store: Warehouse, spec: SourceSpec) -> dict[str, str]:
    marks = ", ".join(["%s"] * len(MOVED))
    rows = store.query(
        f"SELECT corp_number, home_office_city FROM {store.table(spec.name)} WHERE corp_number IN ({marks})", MOVED
    )
    return dict(rows)


def status(store: Warehouse, source_id: int) -> tuple[str, str | None]:
    return tuple(store.query("SELECT status, held_because FROM {schema}.sources WHERE source_id = %s", (source_id,))[0])


def decisions(store: Warehouse, source_id: int) -> list[tuple]:
    return [
        tuple(row)
        for row in store.query(
            "SELECT partition_key, decision, decided_by, reason FROM {schema}.version_decisions WHERE source_id = %s",
            (source_id,),
        )
    ]


@pytest.fixture
def held(warehouse, specs, landing, tmp_path) -> HeldFile:
    """The sample loaded and published, then a second file of the source loaded and held."""
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    rows_before, cities_before = registry_rows(warehouse, spec), cities(warehouse, spec)
    load_file(spec, land(tmp_path, spec, HELD_FILE, crafted_file()), HELD_FILE, warehouse, tmp_path / "s", "held")
    ((source_id,),) = warehouse.query("SELECT source_id FROM {schema}.sources WHERE partition_key = %s", (HELD_FILE,))
    return HeldFile(warehouse, page_app(warehouse, tmp_path), spec, int(source_id), rows_before, cities_before)


def decide(held: HeldFile, action: str, reason: str, token: str = ""):
    """Posts the held version's form, with the token its page carries (or one fetched before)."""
    token = token or csrf(held.client.get(f"/held/{held.source_id}").text)
    return held.client.post(
        f"/held/{held.source_id}/action", data={"csrf": token, "action": action, "source": SOURCE, "reason": reason}
    )


def test_a_held_version_is_listed_with_what_publishing_it_would_change(held):
    assert registry_rows(held.store, held.spec) == held.rows_before, "consumers see nothing of the held file"
    assert status(held.store, held.source_id) == ("held", "rejected_rate")

    listing = held.client.get("/held")
    assert listing.status_code == 200 and 'href="/dq/held">Held versions<' in listing.text
    assert f"{SOURCE} {HELD_FILE} rejected_rate 10 6 0 4 " in page_text(listing.text)
    assert f'href="/dq/held/{held.source_id}">review<' in listing.text

    detail = held.client.get(f"/held/{held.source_id}")
    assert detail.status_code == 200
    text = page_text(detail.text)
    assert "Blocking checks failed: rejected_rate" in text
    assert (
        "error rejected_rate 60.00% of records rejected (6 of 10; at most 50.00% allowed by max_rejected_rate)" in text
    )
    for key in MOVED:
        assert f"{key} changed home_office_city: {held.cities_before[key]} → {NEW_CITY}" in text
    assert held.cities_before["000001"] != NEW_CITY and "page 1 of 1: showing 1-4 of 4 rows" in text
    assert "legal_name" not in text.split("What publishing it would change")[1], "only changed values are shown"
    assert detail.text.count('name="reason" required') == 2

    assert held.client.get("/held/999999").status_code == 404


def test_release_publishes_the_held_version_and_records_who_and_why(held):
    without_token = held.client.post(
        f"/held/{held.source_id}/action", data={"action": "release", "source": SOURCE, "reason": REASON}
    )
    assert without_token.status_code == 403

    refused = decide(held, "release", "  ")
    assert refused.url.path == f"/dq/held/{held.source_id}"
    assert flashes(refused.text) == ["a release or discard needs who decides and why"]
    assert status(held.store, held.source_id)[0] == "held" and decisions(held.store, held.source_id) == []
    assert registry_rows(held.store, held.spec) == held.rows_before

    released = decide(held, "release", REASON)
    assert released.url.path == "/dq/held"
    assert flashes(released.text) == [
        f"{SOURCE} version {held.source_id} released by dana.steward and published: 0 rows inserted, 4 updated"
    ]
    assert "No version is held." in released.text
    assert cities(held.store, held.spec) == dict.fromkeys(MOVED, NEW_CITY)
    changed = set(registry_rows(held.store, held.spec)) ^ set(held.rows_before)
    assert {row[0] for row in changed} == set(MOVED), "the four moves and nothing else"
    assert status(held.store, held.source_id)[0] == "completed"
    assert decisions(held.store, held.source_id) == [(HELD_FILE, "released", "dana.steward", REASON)]


def test_discard_drops_the_held_version_and_leaves_the_table_as_it_was(held):
    token = csrf(held.client.get(f"/held/{held.source_id}").text)
    discarded = decide(held, "discard", "a broken export: the registry resends it", token)
    assert discarded.url.path == "/dq/held"
    assert flashes(discarded.text) == [f"{SOURCE} {HELD_FILE} discarded by dana.steward: its staged rows are dropped"]
    assert registry_rows(held.store, held.spec) == held.rows_before
    assert status(held.store, held.source_id)[0] == "discarded"
    staged = held.store.query(
        f"SELECT count(*) FROM {held.store.stage_table(SOURCE)} WHERE _source_id = %s", (held.source_id,)
    )
    assert staged[0][0] == 0
    assert decisions(held.store, held.source_id) == [
        (HELD_FILE, "discarded", "dana.steward", "a broken export: the registry resends it")
    ]

    # A decided version is decided: a late release is refused, on the list of those still held.
    late = decide(held, "release", REASON, token)
    assert late.url.path == "/dq/held"
    assert flashes(late.text) == [f"{SOURCE} version {held.source_id} is discarded, not held"]
    assert registry_rows(held.store, held.spec) == held.rows_before
    assert held.client.get(f"/held/{held.source_id}").status_code == 404
