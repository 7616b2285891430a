"""Landing sensors on a real folder and a real S3 endpoint; the runs they request land rows,
many files to a run, and their cursor stays small whatever the number of files."""

import json
import logging
import os
import shutil

import dagster as dg
import duckdb
import pytest
from dagster_aws.s3 import S3Resource

from harmonizer_dagster.core.files import fingerprint, locate
from harmonizer_dagster.core.landing import ScanState, scan_folder
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.orchestration.resources import LandingZone, S3Landing
from harmonizer_dagster.orchestration.sensors import build_folder_sensor, build_s3_sensor, landing_tick

SOURCE = "business_registry"
RUNNING = dg.DefaultSensorStatus.RUNNING
Q3 = "registry_2026-Q3.csv"


@pytest.fixture
def environment(monkeypatch, tmp_path):
    drop = tmp_path / "drop"
    (drop / SOURCE).mkdir(parents=True)
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(drop))
    monkeypatch.setenv("HARMONIZER_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    return drop


def tick(sensor, instance, cursor, log: list[str] | None = None, **resources):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    if log is not None:
        handler = logging.Handler()
        handler.emit = lambda record: log.append(record.getMessage())
        context.log.addHandler(handler)
    result = sensor(context)
    if isinstance(result, dg.SensorResult):
        # build_sensor_context does not apply partition requests: apply them as the daemon would.
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result, result.cursor
    return result, cursor


def files_job():
    return build_definitions().resolve_job_def(f"load_{SOURCE}_files")


def folder_sensor(specs):
    return build_folder_sensor(specs[SOURCE], files_job(), 10, RUNNING)


def files_of(request: dg.RunRequest) -> list[str]:
    """The partition keys a run request loads."""
    return request.run_config["ops"][f"{SOURCE}_files_to_load"]["config"]["partition_keys"]


def requested(result) -> list[str]:
    return [key for request in result.run_requests for key in files_of(request)]


def launch(instance, requests):
    """Runs the requests the way the daemon would launch them."""
    job = files_job()
    for request in requests:
        assert job.execute_in_process(instance=instance, run_config=request.run_config, tags=request.tags).success


def test_new_files_wait_until_stable_then_start_a_run(specs, instance, environment, landing, tmp_path):
    sensor = folder_sensor(specs)
    shutil.copy(landing / SOURCE / Q3, environment / SOURCE / Q3)
    landing_zone = LandingZone(landing_dir=str(environment), staging_dir=str(tmp_path / "staging"))

    first, cursor = tick(sensor, instance, None, landing=landing_zone)
    assert first.run_requests == [], "a file seen once may still be being written"
    second, cursor = tick(sensor, instance, cursor, landing=landing_zone)
    with (environment / SOURCE / Q3).open("rb") as handle:
        file_hash = fingerprint(handle).file_hash
    assert [(files_of(r), r.run_key) for r in second.run_requests] == [([Q3], f"{SOURCE}:{file_hash}")]
    assert instance.get_dynamic_partitions(f"{SOURCE}_files") == [Q3]

    launch(instance, second.run_requests)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM harmonizer.{SOURCE}").fetchone() == (988,)

    third, cursor = tick(sensor, instance, cursor, landing=landing_zone)
    assert third.run_requests == [], "handled files are not read again"


def test_growing_file_is_not_picked_up_until_it_stops_changing(specs, instance, environment, tmp_path):
    sensor = folder_sensor(specs)
    landing_zone = LandingZone(landing_dir=str(environment), staging_dir=str(tmp_path / "staging"))
    growing = environment / SOURCE / "upload in progress ü.csv"
    growing.write_text("Corp Number,Legal Name\n")
    cursor = None
    for line in ("000001,A\n", "000002,B\n"):
        result, cursor = tick(sensor, instance, cursor, landing=landing_zone)
        assert result.run_requests == []
        with growing.open("a") as handle:
            handle.write(line)
    result, cursor = tick(sensor, instance, cursor, landing=landing_zone)
    assert result.run_requests == []
    result, cursor = tick(sensor, instance, cursor, landing=landing_zone)
    assert requested(result) == ["upload in progress ü.csv"]


def test_same_bytes_share_a_run_key_and_a_corrected_reupload_gets_a_new_one(
    specs, instance, environment, landing, tmp_path
):
    sensor = folder_sensor(specs)
    landing_zone = LandingZone(landing_dir=str(environment), staging_dir=str(tmp_path / "staging"))
    shutil.copy(landing / SOURCE / Q3, environment / SOURCE / Q3)
    _, cursor = tick(sensor, instance, None, landing=landing_zone)
    first, cursor = tick(sensor, instance, cursor, landing=landing_zone)

    shutil.copy(landing / SOURCE / Q3, environment / SOURCE / "renamed copy.csv")
    _, cursor = tick(sensor, instance, cursor, landing=landing_zone)
    copy, cursor = tick(sensor, instance, cursor, landing=landing_zone)
    assert copy.run_requests[0].run_key == first.run_requests[0].run_key, "same bytes, same run key"

    with (environment / SOURCE / Q3).open("a") as handle:
        handle.write("999999,Corrected Co,LLC,ACTIVE,2020-01-01,1 Main St,Albany,NY,12207,Agent,a@b.com,5185550100\n")
    _, cursor = tick(sensor, instance, cursor, landing=landing_zone)
    corrected, cursor = tick(sensor, instance, cursor, landing=landing_zone)
    assert requested(corrected) == [Q3]
    assert corrected.run_requests[0].run_key != first.run_requests[0].run_key


def test_unreadable_folder_skips_the_tick_and_keeps_the_cursor(specs, instance, environment, landing, tmp_path):
    sensor = folder_sensor(specs)
    landing_zone = LandingZone(landing_dir=str(environment), staging_dir=str(tmp_path / "staging"))
    shutil.copy(landing / SOURCE / Q3, environment / SOURCE / Q3)
    _, cursor = tick(sensor, instance, None, landing=landing_zone)
    moved = environment.with_name("elsewhere")
    environment.rename(moved)  # e.g. an unmounted network share
    result, after = tick(sensor, instance, cursor, landing=landing_zone)
    assert isinstance(result, dg.SkipReason) and after == cursor
    moved.rename(environment)
    result, _ = tick(sensor, instance, cursor, landing=landing_zone)
    assert requested(result) == [Q3]


def test_file_deleted_between_listing_and_hashing_is_skipped(specs, instance, environment, landing):
    shutil.copy(landing / SOURCE / Q3, environment / SOURCE / Q3)
    listing = scan_folder(environment, SOURCE)
    (environment / SOURCE / Q3).unlink()
    cursor = ScanState().advance(listing).finish().dump()
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    opened = lambda item: locate(environment, SOURCE, item.key).open()  # noqa: E731
    result = landing_tick(context, specs[SOURCE], lambda *_: listing, lambda item: fingerprint(opened(item)))
    assert result.run_requests == []
    assert json.loads(result.cursor)["waiting"] == [], "a vanished file is dropped, not waited for"


def test_hidden_files_are_reported_once_and_never_loaded(specs, instance, environment, landing, tmp_path):
    sensor = folder_sensor(specs)
    landing_zone = LandingZone(landing_dir=str(environment), staging_dir=str(tmp_path / "staging"))
    shutil.copy(landing / SOURCE / Q3, environment / SOURCE / ".registry_2026-Q3.csv.part")
    cursor, log = None, []
    for _ in range(3):
        result, cursor = tick(sensor, instance, cursor, log, landing=landing_zone)
        assert result.run_requests == []
    reports = [message for message in log if ".registry_2026-Q3.csv.part ignored" in message]
    assert len(reports) == 1, reports
    assert "starts with '.'" in reports[0] and "rename it to load it" in reports[0]


def test_s3_sensor_requests_runs_that_stream_objects_into_the_warehouse(
    specs, instance, environment, landing, s3_endpoint, s3_bucket, tmp_path, monkeypatch
):
    bucket, client = s3_bucket
    sensor = build_s3_sensor(specs[SOURCE], files_job(), 10, RUNNING)
    resources = {
        "s3": S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1"),
        "s3_landing": S3Landing(bucket=bucket, prefix="landing"),
    }
    data = (landing / SOURCE / Q3).read_bytes()
    client.put_object(Bucket=bucket, Key=f"landing/{SOURCE}/z late ü.csv", Body=data)
    _, cursor = tick(sensor, instance, None, **resources)
    first, cursor = tick(sensor, instance, cursor, **resources)
    late_uri = f"s3://{bucket}/landing/{SOURCE}/z late ü.csv"
    assert requested(first) == [late_uri]

    # A key sorting before the last one seen, and a re-upload of a known key, are both noticed.
    client.put_object(Bucket=bucket, Key=f"landing/{SOURCE}/a early.csv", Body=data + b"\n")
    client.put_object(Bucket=bucket, Key=f"landing/{SOURCE}/z late ü.csv", Body=data.replace(b"ACTIVE", b"ACTIVE "))
    _, cursor = tick(sensor, instance, cursor, **resources)
    second, cursor = tick(sensor, instance, cursor, **resources)
    early_uri = f"s3://{bucket}/landing/{SOURCE}/a early.csv"
    assert [sorted(files_of(r)) for r in second.run_requests] == [[early_uri, late_uri]], "one run for both"

    monkeypatch.setenv("HARMONIZER_S3_ENDPOINT_URL", s3_endpoint)
    launch(instance, second.run_requests)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM harmonizer.{SOURCE}").fetchone() == (988,)
        assert sorted(con.execute("SELECT file_uri, status FROM harmonizer.sources").fetchall()) == [
            (early_uri, "completed"),
            (late_uri, "completed"),
        ]
    third, cursor = tick(sensor, instance, cursor, **resources)
    assert third.run_requests == [], "unchanged objects start nothing"


def test_unreachable_bucket_skips_the_tick(specs, instance, s3_endpoint, s3_bucket):
    sensor = build_s3_sensor(specs[SOURCE], files_job(), 10, RUNNING)
    resources = {
        "s3": S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1"),
        "s3_landing": S3Landing(bucket="no-such-bucket", prefix=""),
    }
    result, cursor = tick(sensor, instance, '{"handled":{},"waiting":{}}', **resources)
    assert isinstance(result, dg.SkipReason)
    assert cursor == '{"handled":{},"waiting":{}}'


def drop_small_files(folder, count: int, start: int = 0) -> list[str]:
    """`count` 3-row registry files with keys of their own, named in order."""
    header = "Corp Number,Legal Name,Entity Type,Status,Incorporation Date,Home Office Address,Home Office City,"
    header += "Home Office State,Home Office Zip,Registered Agent,Email,Phone\n"
    names = []
    for number in range(start, start + count):
        rows = "".join(
            f"{number * 3 + row + 500000:06d},Co {number}-{row} Inc,LLC,ACTIVE,2021-06-01,1 Main St,Albany,NY,"
            f"12207,Agent,a{number}@example.com,(518) 555-0100\n"
            for row in range(3)
        )
        name = f"small_{number:04d}.csv"
        (folder / name).write_text(header + rows)
        names.append(name)
    return names


def test_many_ready_files_are_grouped_into_bounded_runs_that_load_each(
    specs, instance, environment, tmp_path, monkeypatch
):
    monkeypatch.setenv("HARMONIZER_RUN_MAX_FILES", "3")
    names = drop_small_files(environment / SOURCE, 7)
    small = (environment / SOURCE / names[0]).read_text()
    big = environment / SOURCE / "z big.csv"
    big.write_text(small + "".join(small.splitlines(keepends=True)[1:]).replace(",Co ", ",Big Co ") * 4)
    # The byte bound sits below the big file's size and above three small files' sizes.
    monkeypatch.setenv("HARMONIZER_RUN_MAX_BYTES", str(big.stat().st_size - 1))
    sensor = folder_sensor(specs)
    zone = LandingZone(landing_dir=str(environment), staging_dir=str(tmp_path / "staging"))
    _, cursor = tick(sensor, instance, None, landing=zone)
    result, cursor = tick(sensor, instance, cursor, landing=zone)

    runs = [files_of(request) for request in result.run_requests]
    assert runs == [names[0:3], names[3:6], names[6:], ["z big.csv"]], "at most 3 files; the big one alone"
    assert len({request.run_key for request in result.run_requests}) == len(runs)
    launch(instance, result.run_requests[:1])
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        loaded = con.execute("SELECT partition_key FROM harmonizer.sources WHERE status = 'completed'").fetchall()
    assert sorted(key for (key,) in loaded) == sorted(runs[0])


def test_a_cursor_reset_over_loaded_files_starts_nothing_and_a_preserved_mtime_copy_is_seen(
    specs, instance, environment, landing, tmp_path
):
    sensor = folder_sensor(specs)
    zone = LandingZone(landing_dir=str(environment), staging_dir=str(tmp_path / "staging"))
    drop_small_files(environment / SOURCE, 4)
    _, cursor = tick(sensor, instance, None, landing=zone)
    first, cursor = tick(sensor, instance, cursor, landing=zone)
    launch(instance, first.run_requests)

    _, reset = tick(sensor, instance, None, landing=zone)
    again, reset = tick(sensor, instance, reset, landing=zone)
    assert again.run_requests == [], "files loaded with these bytes start no run after a reset"

    # Copied with its old modification time kept (cp -p, rsync -t): older than the mark, yet new.
    shutil.copy2(landing / SOURCE / Q3, environment / SOURCE / Q3)
    old = (landing / SOURCE / Q3).stat()
    os.utime(environment / SOURCE / Q3, ns=(old.st_atime_ns, old.st_mtime_ns - 10**12))
    _, cursor = tick(sensor, instance, cursor, landing=zone)
    late, cursor = tick(sensor, instance, cursor, landing=zone)
    assert requested(late) == [Q3]
