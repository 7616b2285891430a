"""A run of several files: each is its own partition, and a bad file fails only itself."""

import gzip
import hashlib
import uuid

import dagster as dg
import psycopg
import pytest

from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.orchestration.checks import check_specs
from harmonizer_dagster.orchestration.run_config import files_run_config
from harmonizer_dagster_tests.conftest import WAREHOUSES
from harmonizer_dagster_tests.test_sensors import drop_small_files

SOURCE = "business_registry"


@pytest.fixture(params=WAREHOUSES)
def warehouse_url(request, monkeypatch, tmp_path):
    """The code location's warehouse: a DuckDB file, or a PostgreSQL database of its own."""
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(tmp_path / "drop"))
    monkeypatch.setenv("HARMONIZER_STAGING_DIR", str(tmp_path / "staging"))
    if request.param == "duckdb":
        url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
        monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", url)
        yield url
        return
    server = request.getfixturevalue("postgres_url")
    name = f"files_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = server.rsplit("/", 1)[0] + "/" + name
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", url)
    yield url
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_bad_file_fails_only_itself_and_the_others_load_publish_and_materialize(
    warehouse_url, specs, instance, tmp_path
):
    folder = tmp_path / "drop" / SOURCE
    folder.mkdir(parents=True)
    good = drop_small_files(folder, 2)
    (folder / "cut.csv.gz").write_bytes(gzip.compress((folder / good[0]).read_bytes())[:-12])
    keys = [good[0], "cut.csv.gz", good[1]]

    job = build_definitions().resolve_job_def(f"load_{SOURCE}_files")
    config = files_run_config(specs[SOURCE], keys)
    result = job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)

    assert not result.success, "the run says a file failed"
    (failure,) = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    reason = failure.step_failure_data.error.message
    assert "1 of 3 file(s) failed: cut.csv.gz: " in reason and good[0] not in reason, reason
    # What the instance holds, as the UI shows it: the step's events end with its failure.
    events = [
        record.event_log_entry.dagster_event
        for record in instance.get_records_for_run(
            result.run_id,
            of_type={dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION},
        ).records
    ]
    materialized = {(e.asset_key.to_user_string(), e.partition) for e in events if e.is_step_materialization}
    assert materialized == {(asset, key) for key in good for asset in (SOURCE, f"{SOURCE}_published")} | {
        (f"{SOURCE}_dq_report", None)
    }
    evaluations = {
        (e.event_specific_data.check_name, e.event_specific_data.partition)
        for e in events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert {key for _, key in evaluations} == set(good)
    assert len(evaluations) == 2 * len(check_specs(specs[SOURCE])) == 4
    assert set(instance.get_dynamic_partitions(f"{SOURCE}_files")) == set(keys)

    store = open_warehouse(warehouse_url, "harmonizer")
    rows = store.query(f'SELECT count(*) FROM harmonizer."{SOURCE}"')
    assert rows[0][0] == 6, "both good files' rows are in"
    loaded = store.query("SELECT partition_key, status, published_at IS NOT NULL FROM harmonizer.sources")
    assert sorted((key, status, published) for key, status, published in loaded if key in good) == [
        (key, "completed", True) for key in sorted(good)
    ]
    assert all(status != "completed" for key, status, _ in loaded if key == "cut.csv.gz")


def test_a_file_with_the_bytes_of_the_one_before_it_in_the_run_is_skipped_as_loaded(
    warehouse_url, specs, instance, tmp_path
):
    """The next file is prepared while the one before it is checked and published: it is still
    registered after that one's upsert, so identical bytes are known as loaded."""
    folder = tmp_path / "drop" / SOURCE
    folder.mkdir(parents=True)
    first, last = drop_small_files(folder, 2)
    (folder / "copy.csv").write_bytes((folder / first).read_bytes())
    keys = [first, "copy.csv", last]

    job = build_definitions().resolve_job_def(f"load_{SOURCE}_files")
    assert job.execute_in_process(instance=instance, run_config=files_run_config(specs[SOURCE], keys)).success

    store = open_warehouse(warehouse_url, "harmonizer")
    loaded = store.query(
        "SELECT partition_key, status, duplicate_of_source_id IS NOT NULL FROM harmonizer.sources ORDER BY source_id"
    )
    assert loaded == [(first, "completed", False), ("copy.csv", "skipped", True), (last, "completed", False)]
    assert store.query(f'SELECT count(*) FROM harmonizer."{SOURCE}"')[0][0] == 6


def run_range(instance, keys: list[str], first: str, last: str) -> dg.ExecuteInProcessResult:
    """Runs the source's job as a backfill runs it over the range `first`...`last` of `keys`."""
    instance.add_dynamic_partitions(f"{SOURCE}_files", keys)
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    ranged = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    return job.execute_in_process(instance=instance, tags=ranged, raise_on_error=False)


def run_events(instance, run_id: str) -> list[dg.DagsterEvent]:
    kinds = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION}
    records = instance.get_records_for_run(run_id, of_type=kinds).records
    return [record.event_log_entry.dagster_event for record in records]


def test_a_backfill_range_loads_each_file_as_its_partition_and_a_bad_one_fails_only_itself(
    warehouse_url, specs, instance, tmp_path
):
    """A backfill hands a run a range of partitions (the assets' backfill policy): each file of
    it gets its own materialization, checks and publication, and a bad file is left behind and
    named once the others are loaded."""
    folder = tmp_path / "drop" / SOURCE
    folder.mkdir(parents=True)
    first, second, third = drop_small_files(folder, 3)
    (folder / "cut.csv.gz").write_bytes(gzip.compress((folder / second).read_bytes())[:-12])
    # A link to rows outside the landing area, in the middle of the range: never read.
    outside = tmp_path / "outside.csv"
    outside.write_bytes((folder / first).read_bytes().replace(b"50000", b"90000"))
    (folder / "link.csv").symlink_to(outside)

    result = run_range(instance, [first, "cut.csv.gz", second, "link.csv", third], first, third)

    assert not result.success
    failures = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    # Each step took every file of the range; the last names the files left behind.
    assert [failure.step_key for failure in failures] == [f"{SOURCE}.{SOURCE}_publish"]
    reason = failures[0].step_failure_data.error.message
    assert "2 of 5 file(s) failed: cut.csv.gz: " in reason and "link.csv: " in reason, reason
    assert first not in reason and "symbolic link" in reason, reason
    events = run_events(instance, result.run_id)
    materializations = [e for e in events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
    good = [first, second, third]
    assert sorted((e.asset_key.to_user_string(), e.partition) for e in materializations) == sorted(
        (asset, key) for key in good for asset in (SOURCE, f"{SOURCE}_published")
    )
    # Each file's materialization tells its own figures, and its data version is its hash.
    hashes = {key: hashlib.sha256((folder / key).read_bytes()).hexdigest() for key in good}
    sources = [e.step_materialization_data.materialization for e in materializations if e.asset_key.path == [SOURCE]]
    assert {m.partition: m.metadata["file_hash"].value for m in sources} == hashes
    assert {m.partition: m.tags["dagster/data_version"] for m in sources} == hashes
    evaluations = {
        (e.event_specific_data.check_name, e.event_specific_data.partition)
        for e in events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert evaluations == {(check.name, key) for key in good for check in check_specs(specs[SOURCE])}

    store = open_warehouse(warehouse_url, "harmonizer")
    assert store.query(f'SELECT count(*) FROM harmonizer."{SOURCE}"')[0][0] == 9
    loaded = store.query("SELECT partition_key, status, published_at IS NOT NULL FROM harmonizer.sources")
    assert sorted(row for row in loaded if row[0] in good) == [(key, "completed", True) for key in good]
    assert all(status != "completed" for key, status, _ in loaded if key == "cut.csv.gz")
    assert not [row for row in loaded if row[0] == "link.csv"], "the link was never hashed nor registered"


def test_a_backfill_range_loads_file_after_file_and_skips_the_same_bytes_again(
    warehouse_url, specs, instance, tmp_path
):
    """Every step of the run does its own work for each file of the range, none skipped: a file
    with the bytes of one before it is skipped as loaded, once that one is published."""
    folder = tmp_path / "drop" / SOURCE
    folder.mkdir(parents=True)
    first, last = drop_small_files(folder, 2)
    (folder / "copy.csv").write_bytes((folder / first).read_bytes())

    result = run_range(instance, [first, "copy.csv", last], first, last)

    assert result.success
    executed = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    skipped = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SKIPPED}
    steps = ("partitions", "hash", "validate", "deduplicate", "stage", "audit", "publish")
    assert executed == {f"{SOURCE}.{SOURCE}_{step}" for step in steps}
    assert skipped == set()
    published = {
        e.partition
        for e in run_events(instance, result.run_id)
        if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and e.asset_key.path == [f"{SOURCE}_published"]
    }
    # The copy is published too: its rows are those of the version it repeats.
    assert published == {first, "copy.csv", last}
    store = open_warehouse(warehouse_url, "harmonizer")
    loaded = store.query(
        "SELECT partition_key, status, duplicate_of_source_id IS NOT NULL FROM harmonizer.sources ORDER BY source_id"
    )
    assert loaded == [(first, "completed", False), ("copy.csv", "skipped", True), (last, "completed", False)]
    assert store.query(f'SELECT count(*) FROM harmonizer."{SOURCE}"')[0][0] == 6


def test_a_backfill_range_of_one_file_runs_as_that_partition(warehouse_url, instance, tmp_path):
    """A backfill's last range may hold one file: it goes through the same steps as any run."""
    folder = tmp_path / "drop" / SOURCE
    folder.mkdir(parents=True)
    (only,) = drop_small_files(folder, 1)

    result = run_range(instance, [only], only, only)

    assert result.success
    executed = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    assert {f"{SOURCE}.{SOURCE}_audit", f"{SOURCE}.{SOURCE}_publish"} <= executed
    (materialization,) = [
        e.step_materialization_data.materialization
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and e.asset_key.path == [SOURCE]
    ]
    assert materialization.partition == only
    assert materialization.tags["dagster/data_version"] == hashlib.sha256((folder / only).read_bytes()).hexdigest()


def test_a_backfill_range_of_the_published_asset_alone_loads_what_it_needs_and_publishes_each_file(
    warehouse_url, specs, instance, tmp_path
):
    """Publishing needs the staged and audited version: the steps before it run too, and find
    the files already loaded skipped by their hash."""
    folder = tmp_path / "drop" / SOURCE
    folder.mkdir(parents=True)
    first, last = drop_small_files(folder, 2)
    (folder / "unloaded.csv").write_bytes((folder / first).read_bytes())
    job = build_definitions().resolve_job_def(f"load_{SOURCE}_files")
    assert job.execute_in_process(instance=instance, run_config=files_run_config(specs[SOURCE], [first])).success
    instance.add_dynamic_partitions(f"{SOURCE}_files", ["unloaded.csv", last])
    assert job.execute_in_process(instance=instance, run_config=files_run_config(specs[SOURCE], [last])).success

    published = dg.AssetKey(f"{SOURCE}_published")
    republish = build_definitions().resolve_implicit_global_asset_job_def().get_subset(asset_selection={published})
    ranged = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    result = republish.execute_in_process(instance=instance, tags=ranged)

    assert {
        e.partition
        for e in run_events(instance, result.run_id)
        if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and e.asset_key == published
    } == {first, "unloaded.csv", last}
    store = open_warehouse(warehouse_url, "harmonizer")
    statuses = store.query("SELECT partition_key, status FROM harmonizer.sources ORDER BY source_id")
    assert statuses == [(first, "completed"), (last, "completed"), ("unloaded.csv", "skipped")]


def test_a_failed_blocking_check_fails_its_file_in_a_backfill_range(warehouse_url, instance, tmp_path):
    """As it fails a materialization of its partition: the file is named, loaded but not
    published, and the others are published."""
    folder = tmp_path / "drop" / SOURCE
    folder.mkdir(parents=True)
    first, last = drop_small_files(folder, 2)
    # Every zip four digits long: loaded, but the blocking pass-rate check fails.
    lines = (folder / first).read_text().splitlines(keepends=True)
    (folder / "bad zips.csv").write_text(lines[0] + "".join(line.replace(",12207,", ",1234,") for line in lines[1:]))

    result = run_range(instance, [first, "bad zips.csv", last], first, last)

    assert not result.success
    (failure,) = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    reason = failure.step_failure_data.error.message
    assert "1 of 3 file(s) failed: bad zips.csv: bad zips.csv is held, not published: blocking check(s) " in reason
    store = open_warehouse(warehouse_url, "harmonizer")
    loaded = store.query("SELECT partition_key, status, published_at IS NOT NULL FROM harmonizer.sources")
    assert sorted(loaded) == sorted(
        [(first, "completed", True), ("bad zips.csv", "held", False), (last, "completed", True)]
    )
    assert store.query("SELECT count(*) FROM harmonizer.business_registry WHERE home_office_zip = '1234'") == [(0,)]


def test_a_backfill_range_of_the_source_alone_loads_without_publishing(warehouse_url, instance, tmp_path):
    """Publication is the published asset's: a backfill that did not select it leaves it alone."""
    folder = tmp_path / "drop" / SOURCE
    folder.mkdir(parents=True)
    first, last = drop_small_files(folder, 2)
    instance.add_dynamic_partitions(f"{SOURCE}_files", [first, last])
    source_only = (
        build_definitions().resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(SOURCE)})
    )
    ranged = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    result = source_only.execute_in_process(instance=instance, tags=ranged)

    assert result.success
    assert {
        (e.asset_key.to_user_string(), e.partition)
        for e in run_events(instance, result.run_id)
        if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
    } == {(SOURCE, first), (SOURCE, last)}
    store = open_warehouse(warehouse_url, "harmonizer")
    loaded = store.query("SELECT partition_key, status, published_at IS NOT NULL FROM harmonizer.sources")
    assert sorted(loaded) == [(first, "staged", False), (last, "staged", False)]
    assert store.query("SELECT count(*) FROM harmonizer.business_registry") == [(0,)], "staged, not yet published"
