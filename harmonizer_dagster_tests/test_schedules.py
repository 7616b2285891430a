"""Schedules replace cron, with the legacy cadence; a scheduled fetch lands a file for the sensor."""

import datetime
import http.server
import threading
from functools import partial

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from harmonizer_dagster.definitions import build_definitions

SAMPLE = "business_registry/registry_2026-Q3.csv"
START = datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC).timestamp()


def next_fires(schedule: dg.ScheduleDefinition, count: int) -> list[str]:
    times = cron_string_iterator(START, schedule.cron_schedule, schedule.execution_timezone)
    return [next(times).strftime("%Y-%m-%d %H:%M %a") for _ in range(count)]


def test_registry_fires_only_on_the_first_monday_of_each_quarter():
    schedule = build_definitions().resolve_schedule_def("business_registry_schedule")
    assert schedule.execution_timezone == "America/New_York"
    assert next_fires(schedule, 5) == [
        "2027-01-04 02:00 Mon",
        "2027-04-05 02:00 Mon",
        "2027-07-05 02:00 Mon",
        "2027-10-04 02:00 Mon",
        "2028-01-03 02:00 Mon",
    ]


def test_court_records_weekly_and_news_daily():
    defs = build_definitions()
    assert next_fires(defs.resolve_schedule_def("court_records_schedule"), 2) == [
        "2026-11-22 03:00 Sun",
        "2026-11-29 03:00 Sun",
    ]
    assert next_fires(defs.resolve_schedule_def("news_articles_schedule"), 2) == [
        "2026-11-22 04:00 Sun",
        "2026-11-23 04:00 Mon",
    ]


@pytest.fixture
def upstream_server(landing):
    """A real HTTP server on loopback serving the sample files, standing in for the publisher."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(landing))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_scheduled_fetch_drops_the_upstream_file_into_the_landing_folder(monkeypatch, tmp_path, upstream_server):
    drop = tmp_path / "drop"
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(drop))
    defs = build_definitions()
    schedule = defs.resolve_schedule_def("business_registry_schedule")
    monkeypatch.delenv("HARMONIZER_UPSTREAM_BUSINESS_REGISTRY", raising=False)
    with dg.instance_for_test() as instance:
        skipped = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        assert skipped.skip_message and "HARMONIZER_UPSTREAM_BUSINESS_REGISTRY" in skipped.skip_message

        monkeypatch.setenv(
            "HARMONIZER_UPSTREAM_BUSINESS_REGISTRY", f"{upstream_server}/business_registry/registry_2026-Q3.csv"
        )
        when = datetime.datetime(2027, 1, 4, 2, 0, tzinfo=datetime.UTC)
        data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
        assert len(data.run_requests) == 1
        job = defs.resolve_job_def("fetch_business_registry")
        result = job.execute_in_process(instance=instance, tags={"dagster/scheduled_execution_time": when.isoformat()})
        assert result.success
    fetched = drop / "business_registry" / "registry_2027-01-04.csv"
    assert fetched.read_bytes().startswith(b"Corp Number,Legal Name")
    assert not list(fetched.parent.glob(".*.part")), "no half-fetched file is left behind"


def test_a_schedule_fetching_from_s3_gives_its_fetch_the_s3_resource(monkeypatch, tmp_path, landing, s3_bucket):
    bucket, client = s3_bucket
    client.put_object(Bucket=bucket, Key="upstream/registry.csv", Body=(landing / SAMPLE).read_bytes())
    for name in ("HARMONIZER_S3_BUCKET", "HARMONIZER_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    # Only the schedule names S3; boto3 finds the endpoint in the standard AWS variable.
    monkeypatch.setenv("AWS_ENDPOINT_URL", client.meta.endpoint_url)
    monkeypatch.setenv("HARMONIZER_UPSTREAM_BUSINESS_REGISTRY", f"s3://{bucket}/upstream/registry.csv")
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(tmp_path / "drop"))
    defs = build_definitions()
    assert "s3" in defs.resources
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("fetch_business_registry").execute_in_process(instance=instance)
    assert result.success
    (fetched,) = (tmp_path / "drop" / "business_registry").glob("registry_*.csv")
    assert fetched.read_bytes() == (landing / SAMPLE).read_bytes()
