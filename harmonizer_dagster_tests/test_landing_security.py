"""Nothing outside the landing area is ever read: symbolic links are never followed, not by the
listing (sensors, the register step), not by the hash step, and not by the later steps, which
read the very file that was hashed. Messages quote a file's names, never its other content; the
default landing area lies outside the package."""

import logging
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from harmonizer_dagster.core.files import RefusedFile, fingerprint, locate, open_landed, pinned_path
from harmonizer_dagster.core.landing import Ignored, ScanState, scan_folder
from harmonizer_dagster.core.pipeline import hash_step, validate_step
from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.orchestration.resources import LandingZone
from harmonizer_dagster.orchestration.sensors import build_folder_sensor, landing_tick
from harmonizer_dagster_tests.conftest import WAREHOUSES, drop_schemas, load_file, warehouse_url
from harmonizer_dagster_tests.test_sensors import files_job, requested

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"
SECRET = "root:x:0:0:root:/root:/bin/bash"
OUTSIDE = "outside the landing area"


@pytest.fixture
def outside(tmp_path: Path, landing: Path) -> Path:
    """A folder beside the landing area holding a passwd-like file and a valid registry CSV."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "passwd").write_text(f"{SECRET}\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    shutil.copy(landing / SOURCE / Q3, folder / "registry_2027-Q1.csv")
    return folder


@pytest.fixture
def links(landing: Path, outside: Path) -> Path:
    """Every kind of link into and out of the registry's landing folder, beside its real files."""
    folder = landing / SOURCE
    (folder / "passwd.csv").symlink_to(outside / "passwd")
    (folder / "registry_2027-Q1.csv").symlink_to(outside / "registry_2027-Q1.csv")
    (folder / "elsewhere").symlink_to(outside, target_is_directory=True)
    (folder / "alias_2026-Q3.csv").symlink_to(Q3)
    return folder


def test_the_listing_skips_every_link_saying_where_it_points(links, landing):
    ignored: list[Ignored] = []
    keys = [item.key for item in scan_folder(landing, SOURCE, ignored)]
    assert keys == [Q3, "registry_2026-Q4.csv.gz"]
    reasons = {item.key: item.reason for item in ignored}
    assert set(reasons) == {"passwd.csv", "registry_2027-Q1.csv", "elsewhere", "alias_2026-Q3.csv"}
    assert f"a file {OUTSIDE} {landing.resolve()}" in reasons["passwd.csv"]
    assert f"a folder {OUTSIDE}" in reasons["elsewhere"]
    assert f"to {SOURCE}/{Q3}, inside the landing area" in reasons["alias_2026-Q3.csv"]
    assert all("links are never followed" in reason for reason in reasons.values())
    assert not any(SECRET in reason or "passwd" in reason.replace("passwd.csv", "") for reason in reasons.values())


def test_a_source_folder_that_is_a_link_is_skipped_whole(tmp_path, outside):
    landing = tmp_path / "area"
    landing.mkdir()
    (landing / SOURCE).symlink_to(outside, target_is_directory=True)
    ignored: list[Ignored] = []
    assert scan_folder(landing, SOURCE, ignored) == []
    assert [item.key for item in ignored] == ["."]
    assert f"the source folder {landing / SOURCE} it is a symbolic link to a folder {OUTSIDE}" in ignored[0].reason
    with pytest.raises(RefusedFile, match=OUTSIDE):
        open_landed(landing, f"{SOURCE}/registry_2027-Q1.csv")


@pytest.mark.parametrize("key", ["passwd.csv", "registry_2027-Q1.csv", "elsewhere/registry_2027-Q1.csv"])
def test_the_hash_step_refuses_a_link_out_and_registers_nothing(links, landing, specs, warehouse, tmp_path, key):
    spec = specs[SOURCE]
    with pytest.raises(RefusedFile, match=f"{OUTSIDE}.*copy the file in") as refused:
        load_file(spec, landing, key, warehouse, tmp_path / "staging")
    assert SECRET not in str(refused.value)
    assert warehouse.query("SELECT count(*) FROM {schema}.sources")[0][0] == 0
    assert warehouse.query(f"SELECT count(*) FROM {warehouse.table(SOURCE)}")[0][0] == 0


def test_a_link_inside_the_landing_area_is_not_loaded_either(links, landing, specs, warehouse, tmp_path):
    with pytest.raises(RefusedFile, match=f"to {SOURCE}/{Q3}, inside the landing area"):
        load_file(specs[SOURCE], landing, "alias_2026-Q3.csv", warehouse, tmp_path / "staging")
    assert warehouse.query("SELECT count(*) FROM {schema}.sources")[0][0] == 0
    # The file it points to loads under its own name.
    assert load_file(specs[SOURCE], landing, Q3, warehouse, tmp_path / "staging").records_imported == 988


@pytest.mark.parametrize("swapped", ["file", "folder"])
def test_a_link_swapped_in_after_the_hash_is_not_read(landing, outside, specs, warehouse, tmp_path, swapped):
    """The file (or a folder above it) is replaced by a link out between hash and validate."""
    spec = specs[SOURCE]
    (landing / SOURCE / "sub").mkdir()
    shutil.move(landing / SOURCE / Q3, landing / SOURCE / "sub" / "registry_2027-Q1.csv")
    warehouse.migrate([spec])
    key = "sub/registry_2027-Q1.csv"
    hashed = hash_step(spec, locate(landing, SOURCE, key), warehouse, tmp_path / "staging", "race")
    if swapped == "file":
        (landing / SOURCE / key).unlink()
        (landing / SOURCE / key).symlink_to(outside / "registry_2027-Q1.csv")
    else:
        (landing / SOURCE / "sub").rename(landing / SOURCE / "sub_old")
        (landing / SOURCE / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RefusedFile, match=f"{OUTSIDE}"):
        validate_step(spec, hashed)


def test_a_file_replaced_after_the_hash_is_not_read(landing, specs, warehouse, tmp_path):
    spec = specs[SOURCE]
    warehouse.migrate([spec])
    hashed = hash_step(spec, locate(landing, SOURCE, Q3), warehouse, tmp_path / "staging", "race")
    replacement = landing / SOURCE / ".replacement"
    replacement.write_text(f"{SECRET}\n")
    os.replace(replacement, landing / SOURCE / Q3)
    with pytest.raises(RefusedFile, match="replaced or changed after it was hashed"):
        validate_step(spec, hashed)


def test_readers_of_an_opened_file_read_it_whatever_its_path_becomes(landing, outside):
    path = landing / SOURCE / Q3
    expected = path.read_bytes()
    with open_landed(landing, f"{SOURCE}/{Q3}") as handle:
        path.unlink()
        path.symlink_to(outside / "passwd")
        with pinned_path(handle, Q3) as pinned:
            assert pinned.name == Q3
            assert pinned.read_bytes() == expected


# Through Dagster, on a real instance.


@pytest.fixture(params=WAREHOUSES)
def location(request, monkeypatch, landing, tmp_path):
    """The code location pointed at the private landing copy and at each warehouse (its default schema)."""
    url = warehouse_url(request.param, tmp_path, request)
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(landing))
    monkeypatch.setenv("HARMONIZER_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", url)
    store = open_warehouse(url)
    yield store
    if request.param == "postgres":
        drop_schemas(store)


def _messages(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(run_id))


def _tick(sensor, instance, cursor, log: list[str], landing_zone: LandingZone):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"landing": landing_zone})
    handler = logging.Handler()
    handler.emit = lambda record: log.append(record.getMessage())
    context.log.addHandler(handler)
    result = sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_the_sensor_requests_runs_for_real_files_only_and_says_why_once(links, landing, specs, instance, tmp_path):
    sensor = build_folder_sensor(specs[SOURCE], files_job(), 10, dg.DefaultSensorStatus.RUNNING)
    zone = LandingZone(landing_dir=str(landing), staging_dir=str(tmp_path / "staging"))
    log: list[str] = []
    first = _tick(sensor, instance, None, log, zone)
    second = _tick(sensor, instance, first.cursor, log, zone)
    assert sorted(requested(second)) == [Q3, "registry_2026-Q4.csv.gz"]
    assert sorted(instance.get_dynamic_partitions(f"{SOURCE}_files")) == [Q3, "registry_2026-Q4.csv.gz"]
    ignored = [line for line in log if " ignored: " in line]
    assert len(ignored) == 4, "each link is reported once, not at every tick"
    assert any(line.startswith(f"{SOURCE}: passwd.csv ignored: ") and OUTSIDE in line for line in ignored)
    assert not any(SECRET in line for line in log)


def test_the_sensor_skips_a_file_swapped_for_a_link_between_two_ticks(landing, outside, specs, instance, tmp_path):
    sensor = build_folder_sensor(specs[SOURCE], files_job(), 10, dg.DefaultSensorStatus.RUNNING)
    zone = LandingZone(landing_dir=str(landing), staging_dir=str(tmp_path / "staging"))
    log: list[str] = []
    first = _tick(sensor, instance, None, log, zone)
    (landing / SOURCE / Q3).unlink()
    (landing / SOURCE / Q3).symlink_to(outside / "registry_2027-Q1.csv")
    second = _tick(sensor, instance, first.cursor, log, zone)
    assert requested(second) == ["registry_2026-Q4.csv.gz"]
    assert any(line.startswith(f"{SOURCE}: {Q3} ignored: ") and OUTSIDE in line for line in log)


def test_a_file_that_becomes_a_link_while_the_sensor_hashes_it_is_not_hashed(landing, outside, specs, instance):
    listing = scan_folder(landing, SOURCE)
    (landing / SOURCE / Q3).unlink()
    (landing / SOURCE / Q3).symlink_to(outside / "passwd")
    cursor = ScanState().advance(listing).finish().dump()
    context = dg.build_sensor_context(instance=instance, cursor=cursor)

    def content_hash(item):
        with locate(landing, SOURCE, item.key).open() as handle:
            return fingerprint(handle)

    result = landing_tick(context, specs[SOURCE], lambda *_: listing, content_hash)
    assert requested(result) == ["registry_2026-Q4.csv.gz"]


def test_ingest_landing_loads_the_real_files_and_logs_each_link(links, location, instance):
    result = build_definitions().resolve_job_def("ingest_landing").execute_in_process(instance=instance)
    assert result.success
    messages = _messages(instance, result.run_id)
    for key in ("passwd.csv", "registry_2027-Q1.csv", "elsewhere", "alias_2026-Q3.csv"):
        assert f"{SOURCE}: {key} ignored: it is a symbolic link" in messages
    assert SECRET not in messages
    keys = {
        row[0] for row in location.query("SELECT partition_key FROM {schema}.sources WHERE source_type = %s", (SOURCE,))
    }
    assert keys == {Q3, "registry_2026-Q4.csv.gz"}
    assert not location.query("SELECT 1 FROM {schema}.sources WHERE error_message LIKE '%root:%'")


def test_the_register_job_registers_no_link(links, location, instance):
    result = build_definitions().resolve_job_def("register_file_versions").execute_in_process(instance=instance)
    assert result.success
    assert sorted(instance.get_dynamic_partitions(f"{SOURCE}_files")) == [Q3, "registry_2026-Q4.csv.gz"]
    assert f"{SOURCE}: 2 file(s) landed, 2 newly registered, 4 ignored" in _messages(instance, result.run_id)


@pytest.mark.parametrize("key", ["passwd.csv", "registry_2027-Q1.csv", "elsewhere/registry_2027-Q1.csv"])
def test_materializing_a_linked_partition_fails_with_the_reason_and_reads_nothing(links, location, instance, key):
    instance.add_dynamic_partitions(f"{SOURCE}_files", [key])
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    result = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)
    assert not result.success
    failures = [event.step_failure_data for event in result.all_events if event.is_step_failure]
    what = "folder" if "/" in key else "file"
    area = Path(os.environ["HARMONIZER_LANDING_DIR"]).resolve()
    assert [f.user_failure_data.description for f in failures if f.user_failure_data] == [
        f"{SOURCE}/{key.split('/')[0]}: it is a symbolic link to a {what} {OUTSIDE} {area}: "
        "links are never followed, so it is not loaded "
        "(nothing outside the landing area is ever read; copy the file in to load it)"
    ]
    assert SECRET not in _messages(instance, result.run_id)
    location.migrate([])
    assert location.query("SELECT count(*) FROM {schema}.sources")[0][0] == 0


# What messages quote of a file that is no source file.


def _materialize_failure(instance: dg.DagsterInstance, key: str) -> str:
    instance.add_dynamic_partitions(f"{SOURCE}_files", [key])
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    result = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)
    assert not result.success
    return _messages(instance, result.run_id)


def test_a_file_sharing_no_name_with_its_spec_has_no_content_quoted(location, landing, instance):
    (landing / SOURCE / "registry_2027-Q2.csv").write_text(f"{SECRET}\nbin:x:2:2:bin:/bin:/usr/sbin/nologin\n")
    messages = _materialize_failure(instance, "registry_2027-Q2.csv")
    [(error,)] = location.query(
        "SELECT error_message FROM {schema}.sources WHERE partition_key = 'registry_2027-Q2.csv'"
    )
    for text in (error, messages):
        assert SECRET not in text and "bin:x" not in text
    assert "the file has none of the business_registry spec's names (1 other name(s), not quoted)" in error


def test_a_header_mismatch_quotes_at_most_twenty_names_cut_short(location, landing, instance):
    junk = [f"{n:02d}" + "x" * 100 for n in range(30)]
    (landing / SOURCE / "registry_2027-Q3.csv").write_text(",".join(["Corp Number", *junk]) + "\n1" + "," * 30 + "\n")
    _materialize_failure(instance, "registry_2027-Q3.csv")
    [(error,)] = location.query(
        "SELECT error_message FROM {schema}.sources WHERE partition_key = 'registry_2027-Q3.csv'"
    )
    assert "the file has ['Corp Number', '00" + "x" * 38 + "...', " in error
    assert "'18" + "x" * 38 + "...', and 11 more]" in error
    assert "x" * 39 not in error


# The default landing area.


def test_the_default_landing_area_is_a_seeded_folder_outside_the_package(monkeypatch, tmp_path, instance):
    from harmonizer_dagster.core.settings import SAMPLES_DIR

    shipped = sorted(p.relative_to(SAMPLES_DIR) for p in SAMPLES_DIR.rglob("*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARMONIZER_LANDING_DIR", raising=False)
    monkeypatch.setenv("HARMONIZER_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    result = build_definitions().resolve_job_def("smoke_test").execute_in_process(instance=instance)
    assert result.success, "the smoke test loads the seeded samples and matches their manifest"
    seeded = tmp_path / ".harmonizer" / "landing"
    assert sorted(p.relative_to(seeded) for p in seeded.rglob("*")) == shipped

    # Once it exists it is the user's: nothing is copied over what they removed or dropped.
    (seeded / SOURCE / Q3).unlink()
    (seeded / SOURCE / "registry_2027-Q1.csv").write_text("dropped")
    build_definitions()
    assert sorted(p.name for p in (seeded / SOURCE).iterdir()) == ["registry_2026-Q4.csv.gz", "registry_2027-Q1.csv"]
    assert sorted(p.relative_to(SAMPLES_DIR) for p in SAMPLES_DIR.rglob("*")) == shipped
