"""The run launcher's health check on a real instance and real gRPC calls: a run whose code
server does not answer is given `unreachable_timeout_seconds` before it is taken for dead.
(A live Pi's answers, and one that restarted, are proven on the fleet in test_fleet.)"""

import json
import time
import uuid

import dagster as dg
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from harmonizer_dagster_tests.fleet import free_port

LAUNCHER = "harmonizer_dagster.orchestration.run_launcher"


def started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun:
    run = instance.add_run(
        dg.DagsterRun(job_name="load_news_articles", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    )
    instance.add_run_tags(run.run_id, tags)
    return instance.get_run_by_id(run.run_id)


def launcher_instance(unreachable_timeout_seconds: int):
    return dg.instance_for_test(
        overrides={
            "run_launcher": {
                "module": LAUNCHER,
                "class": "CodeServerRunLauncher",
                "config": {"unreachable_timeout_seconds": unreachable_timeout_seconds},
            }
        }
    )


def test_a_silent_code_server_is_given_time_before_its_run_is_taken_for_dead():
    nobody = {GRPC_INFO_TAG: json.dumps({"host": "127.0.0.1", "port": free_port()})}
    with launcher_instance(unreachable_timeout_seconds=1) as instance:
        run = started_run(instance, nobody)
        first = instance.run_launcher.check_run_worker_health(run)
        assert first.status == WorkerStatus.RUNNING and first.transient
        assert "unreachable" in first.msg
        time.sleep(1.2)
        later = instance.run_launcher.check_run_worker_health(run)
        assert later.status == WorkerStatus.FAILED
        assert "run worker is lost" in later.msg


def test_a_run_still_writing_events_is_not_taken_for_dead_while_its_server_is_silent():
    nobody = {GRPC_INFO_TAG: json.dumps({"host": "127.0.0.1", "port": free_port()})}
    with launcher_instance(unreachable_timeout_seconds=1) as instance:
        run = started_run(instance, nobody)
        instance.run_launcher.check_run_worker_health(run)
        time.sleep(1.2)
        instance.report_engine_event("a busy Pi still loading", run)
        health = instance.run_launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.RUNNING and health.transient


def test_a_run_executed_in_process_is_left_to_the_maximum_runtime():
    with launcher_instance(unreachable_timeout_seconds=0) as instance:
        health = instance.run_launcher.check_run_worker_health(started_run(instance, {}))
        assert health.status == WorkerStatus.RUNNING
