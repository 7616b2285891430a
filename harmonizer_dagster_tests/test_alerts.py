"""Failures reach people: a real SMTP server on loopback receives the alert e-mails, and a real
HTTP server standing in for a Slack incoming webhook receives the posts."""

import time

import dagster as dg
import pytest

from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.orchestration.alerts import build_alert_sensors, build_stall_sensor
from harmonizer_dagster.orchestration.resources import Notifier, WarehouseResource
from harmonizer_dagster_tests.inbox import smtp_server
from harmonizer_dagster_tests.webhook import webhook_receiver

run_failure_alerts, run_success_alerts, _ = build_alert_sensors("location", stall_minutes=30, host=None)


@pytest.fixture
def smtp():
    with smtp_server() as server:
        yield server


def notifier(port: int, notify_success: bool = False) -> Notifier:
    return Notifier(
        smtp_host="127.0.0.1",
        smtp_port=port,
        sender="dagster@example.org",
        recipients="oncall@example.org, data@example.org",
        notify_success=notify_success,
    )


@pytest.mark.parametrize(
    ("keys", "tags"),
    [
        (["missing.csv"], {"dagster/partition": "missing.csv"}),
        # A backfill's run of a range: the alert names its first and last file.
        (
            ["missing-a.csv", "missing-b.csv"],
            {
                "dagster/asset_partition_range_start": "missing-a.csv",
                "dagster/asset_partition_range_end": "missing-b.csv",
            },
        ),
    ],
)
def test_a_failed_run_is_emailed(smtp, monkeypatch, tmp_path, keys, tags):
    inbox, port = smtp
    result = announce_a_failed_run(notifier(port), monkeypatch, tmp_path, keys, tags)
    recipients, message = inbox.messages[0]
    assert recipients == ["oncall@example.org", "data@example.org"]
    assert message["Subject"] == "[harmonizer] run failed: load_business_registry"
    body = message.get_content()
    assert result.run_id in body and all(key in body for key in keys), body


def test_a_failed_run_is_posted_to_a_slack_webhook(monkeypatch, tmp_path):
    with webhook_receiver() as hook:
        slack = Notifier(slack_webhook_url=hook.url)
        result = announce_a_failed_run(
            slack, monkeypatch, tmp_path, ["missing.csv"], {"dagster/partition": "missing.csv"}
        )
    # One POST in the incoming-webhook format: a JSON body whose `text` is the message.
    assert hook.content_types == ["application/json"]
    [payload] = hook.posts
    assert list(payload) == ["text"]
    headline, body = payload["text"].split("\n", 1)
    assert headline == "*[harmonizer] run failed: load_business_registry*"
    assert result.run_id in body and "missing.csv" in body, body


def announce_a_failed_run(
    notifier: Notifier, monkeypatch, tmp_path, keys: list[str], tags: dict[str, str]
) -> dg.ExecuteInProcessResult:
    """Fails a run of load_business_registry over files that are not there and runs the
    failure sensor on it with `notifier`; the run's result."""
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(tmp_path))
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'w.duckdb'}")
    job = build_definitions().resolve_job_def("load_business_registry")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("business_registry_files", keys)
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alerts",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=result.dagster_run,
        ).for_run_failure()
        run_failure_alerts(context, notifier=notifier)
    return result


def test_a_silent_started_run_is_reported_once(smtp, tmp_path):
    inbox, port = smtp
    warehouse = WarehouseResource(url=f"duckdb:///{tmp_path / 'w.duckdb'}")
    resources = {"notifier": notifier(port), "warehouse": warehouse}
    sensor = build_stall_sensor(stall_minutes=0, host=None)
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(build_definitions().resolve_job_def("register_file_versions"))
        instance.handle_run_event(
            run.run_id,
            dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name, message="started"),
        )
        time.sleep(0.1)
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            sensor(context)
        assert inbox.subjects() == ["[harmonizer] run stalled: register_file_versions"]
        with dg.build_sensor_context(instance=instance, cursor=context.cursor, resources=resources) as again:
            sensor(again)
        assert len(inbox.messages) == 1, "a stalled run is reported once"


def test_a_successful_run_is_announced_only_when_asked(smtp):
    inbox, port = smtp
    with dg.instance_for_test() as instance:
        result = build_definitions().resolve_job_def("register_file_versions").execute_in_process(instance=instance)
        success = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)

        def evaluate(wanted: bool):
            context = dg.build_run_status_sensor_context(
                sensor_name="run_success_alerts",
                dagster_event=success,
                dagster_instance=instance,
                dagster_run=result.dagster_run,
            )
            return run_success_alerts(context, notifier=notifier(port, notify_success=wanted))

        assert isinstance(evaluate(False), dg.SkipReason) and inbox.messages == []
        evaluate(True)
    assert inbox.subjects() == ["[harmonizer] run succeeded: register_file_versions"]
