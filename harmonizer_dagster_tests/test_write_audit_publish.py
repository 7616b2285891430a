"""Write, audit, publish on every warehouse: a version failing a blocking check is held out of the
table consumers read, a steward's release or discard does what it says, and later versions load."""

import polars as pl
import pytest

from harmonizer_dagster.core.publishing import (
    HeldVersion,
    discard,
    held_versions,
    pending_changes,
    publish,
    release,
)
from harmonizer_dagster_tests.conftest import load_file

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"


def consumer_table(store) -> list[tuple]:
    """Everything a consumer reads, provenance included, in key order."""
    return store.query("SELECT * FROM {schema}.business_registry ORDER BY corp_number")


def cities(store, keys) -> dict[str, str]:
    rows = store.query("SELECT corp_number, home_office_city FROM {schema}.business_registry")
    return {key: city for key, city in rows if key in keys}


def land_held_file(landing, name: str, keys: list[str], city: str) -> None:
    """10 records: 4 valid ones moving loaded keys to another city, 6 new keys with no legal
    name (60% rejected, over the default max_rejected_rate)."""
    sample = pl.read_csv(landing / SOURCE / Q3, infer_schema=False)
    changed = sample.filter(pl.col("Corp Number").is_in(keys)).with_columns(pl.lit(city).alias("Home Office City"))
    nameless = sample.head(6).with_columns(
        (pl.lit("9") + pl.col("Corp Number")).alias("Corp Number"), pl.lit(None, pl.String).alias("Legal Name")
    )
    pl.concat([changed, nameless]).write_csv(landing / SOURCE / name)


@pytest.fixture
def loaded(warehouse, specs, landing, tmp_path):
    """The sample loaded and published; four of its keys, for files to change."""
    spec = specs[SOURCE]
    load_file(spec, landing, Q3, warehouse, tmp_path / "staging")
    keys = [k for (k,) in warehouse.query("SELECT corp_number FROM {schema}.business_registry ORDER BY 1 LIMIT 4")]
    return spec, keys


def test_a_version_failing_a_blocking_check_leaves_the_consumer_table_exactly_as_it_was(
    warehouse, loaded, landing, tmp_path
):
    spec, keys = loaded
    before = consumer_table(warehouse)
    land_held_file(landing, "held.csv", keys, "NOWHERE")

    load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")

    assert consumer_table(warehouse) == before
    (held,) = held_versions(warehouse)
    assert (held.partition_key, held.records_in_file, held.records_failed) == ("held.csv", 10, 6)
    assert "rejected_rate" in held.held_because
    assert (held.new_keys, held.changed_rows) == (0, 4)
    issues = warehouse.query(
        "SELECT count(*) FROM {schema}.data_quality_issues WHERE partition_key = 'held.csv' AND rule = 'not_nullable'"
    )
    assert issues == [(6,)], "a held version's issues are in the data-quality table"
    changes, total = pending_changes(warehouse, spec, held.source_id)
    assert total == 4
    assert {c.key["corp_number"]: c.changes["home_office_city"][1] for c in changes} == dict.fromkeys(keys, "NOWHERE")
    assert all(set(c.changes) == {"home_office_city"} and c.kind == "changed" for c in changes)
    with pytest.raises(HeldVersion, match="rejected_rate"):
        publish(warehouse, spec, "held.csv", "someone")
    assert consumer_table(warehouse) == before


def test_release_publishes_a_held_version_as_it_is_and_records_who_and_why(warehouse, loaded, landing, tmp_path):
    spec, keys = loaded
    land_held_file(landing, "held.csv", keys, "NOWHERE")
    load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")
    (held,) = held_versions(warehouse)

    with pytest.raises(ValueError, match="who decides and why"):
        release(warehouse, spec, held.source_id, "steward", " ")
    published = release(warehouse, spec, held.source_id, "steward", "the missing names are expected this quarter")

    assert (published.inserted, published.updated) == (0, 4)
    assert cities(warehouse, keys) == dict.fromkeys(keys, "NOWHERE")
    assert warehouse.query(
        "SELECT status, published_at IS NOT NULL FROM {schema}.sources WHERE source_id = %s", (held.source_id,)
    ) == [("completed", True)]
    assert warehouse.query("SELECT source_id, decision, decided_by, reason FROM {schema}.version_decisions") == [
        (held.source_id, "released", "steward", "the missing names are expected this quarter")
    ]
    assert warehouse.query(f"SELECT count(*) FROM {warehouse.stage_table(SOURCE)}") == [(0,)]
    assert held_versions(warehouse) == []
    with pytest.raises(ValueError, match="not held"):
        release(warehouse, spec, held.source_id, "steward", "again")


def test_discard_drops_a_held_version_and_its_bytes_are_not_loaded_again(warehouse, loaded, landing, tmp_path):
    spec, keys = loaded
    before = consumer_table(warehouse)
    land_held_file(landing, "held.csv", keys, "NOWHERE")
    load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")
    (held,) = held_versions(warehouse)

    assert discard(warehouse, spec, held.source_id, "steward", "a broken export") == "held.csv"

    assert consumer_table(warehouse) == before
    assert warehouse.query("SELECT status FROM {schema}.sources WHERE source_id = %s", (held.source_id,)) == [
        ("discarded",)
    ]
    assert warehouse.query(f"SELECT count(*) FROM {warehouse.stage_table(SOURCE)}") == [(0,)]
    assert warehouse.query("SELECT decision, decided_by, reason FROM {schema}.version_decisions") == [
        ("discarded", "steward", "a broken export")
    ]
    again = load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")
    assert again.skipped, "the same bytes would come to the same verdict"
    assert consumer_table(warehouse) == before


def test_the_same_bytes_of_a_held_version_stay_held_and_a_changed_file_loads(warehouse, loaded, landing, tmp_path):
    spec, keys = loaded
    land_held_file(landing, "held.csv", keys, "NOWHERE")
    load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")
    assert load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging").skipped

    # The corrected file: the same four changes, the nameless records gone.
    sample = pl.read_csv(landing / SOURCE / "held.csv", infer_schema=False)
    sample.filter(pl.col("Legal Name").is_not_null()).write_csv(landing / SOURCE / "held.csv")
    load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")

    assert cities(warehouse, keys) == dict.fromkeys(keys, "NOWHERE")
    assert held_versions(warehouse) == [], "the corrected file supersedes the held one"
    statuses = warehouse.query("SELECT status FROM {schema}.sources WHERE partition_key = 'held.csv' ORDER BY 1")
    assert statuses == [("completed",), ("superseded",)]
    assert warehouse.query(f"SELECT count(*) FROM {warehouse.stage_table(SOURCE)}") == [(0,)]


def test_a_held_version_does_not_block_later_ones_and_its_release_never_moves_a_key_back(
    warehouse, loaded, landing, tmp_path
):
    spec, keys = loaded
    land_held_file(landing, "older.csv", keys, "NOWHERE")
    load_file(spec, landing, "older.csv", warehouse, tmp_path / "staging")
    (held,) = held_versions(warehouse)
    # A later good version moves two of the same keys elsewhere.
    sample = pl.read_csv(landing / SOURCE / Q3, infer_schema=False)
    later = sample.filter(pl.col("Corp Number").is_in(keys[:2])).with_columns(pl.lit("LATER").alias("Home Office City"))
    later.write_csv(landing / SOURCE / "later.csv")

    load_file(spec, landing, "later.csv", warehouse, tmp_path / "staging")
    assert cities(warehouse, keys) == {**cities(warehouse, keys[2:]), keys[0]: "LATER", keys[1]: "LATER"}
    before_release = cities(warehouse, keys)

    published = release(warehouse, spec, held.source_id, "steward", "checked by hand")

    # The older file arrived first: the keys the later one wrote keep its values.
    assert cities(warehouse, keys) == {keys[0]: "LATER", keys[1]: "LATER", keys[2]: "NOWHERE", keys[3]: "NOWHERE"}
    assert before_release[keys[2]] != "NOWHERE"
    assert (published.updated, published.unchanged) == (2, 2)


def test_metrics_show_a_held_version_with_the_checks_it_failed(warehouse, loaded, landing, tmp_path):
    from starlette.testclient import TestClient

    from harmonizer_dagster.web.metrics import create_metrics_app

    spec, keys = loaded
    land_held_file(landing, "held.csv", keys, "NOWHERE")
    load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")

    scraped = TestClient(create_metrics_app(warehouse)).get("/metrics").text
    assert f'harmonizer_versions{{source="{SOURCE}",status="held"}} 1.0' in scraped
    assert f'harmonizer_held_versions{{check="rejected_rate",source="{SOURCE}"}} 1.0' in scraped


def test_the_decide_held_version_job_releases_a_version_and_the_ui_sees_it_published(
    environment, specs, landing, tmp_path
):
    import dagster as dg

    from harmonizer_dagster.core.warehouse import open_warehouse
    from harmonizer_dagster.definitions import build_definitions

    spec = specs[SOURCE]
    store = open_warehouse(f"duckdb:///{environment}")
    load_file(spec, landing, Q3, store, tmp_path / "staging")
    keys = ["000001", "000002", "000003", "000004"]
    land_held_file(landing, "held.csv", keys, "NOWHERE")
    load_file(spec, landing, "held.csv", store, tmp_path / "staging")
    (held,) = held_versions(store)

    job = build_definitions().resolve_job_def("decide_held_version")
    config = {"source_id": held.source_id, "decision": "release", "reason": "checked", "decided_by": "dana"}
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance, run_config={"ops": {"release_or_discard": {"config": config}}}
        )
        (event,) = result.get_asset_materialization_events()
    assert (event.asset_key.to_user_string(), event.partition) == (f"{SOURCE}_published", "held.csv")
    assert cities(store, keys) == dict.fromkeys(keys, "NOWHERE")
    (decision,) = store.query("SELECT decision, decided_by, reason FROM {schema}.version_decisions")
    assert decision[0] == "released" and decision[1].startswith("dana (dagster run ") and decision[2] == "checked"


def test_dead_letters_of_a_held_version_are_not_retried_into_the_table(warehouse, loaded, landing, tmp_path):
    from harmonizer_dagster.core.dead_letters import reprocess

    spec, keys = loaded
    before = consumer_table(warehouse)
    land_held_file(landing, "held.csv", keys, "NOWHERE")
    load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")

    result = reprocess(spec, warehouse, tmp_path / "reprocess")

    published = warehouse.query(
        "SELECT count(*) FROM {schema}.failed_records WHERE partition_key = %s AND error_type = 'validation_error'",
        (Q3,),
    )[0][0]
    assert result.attempted == published, "only the published version's dead letters are retried"
    assert consumer_table(warehouse) == before
