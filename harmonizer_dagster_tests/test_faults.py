"""Real faults: an S3 endpoint dying mid-download, a PostgreSQL backend killed or a server
stopped mid-transaction, a DuckDB file locked by another process. Passing faults are retried
inside the run; other errors fail at once; a failure the warehouse could not take is
recorded later, with its true cause."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import dagster as dg
import duckdb
import psycopg
import pytest
import yaml

from harmonizer_dagster.core.faults import is_transient
from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster.definitions import build_definitions, build_resources
from harmonizer_dagster.orchestration.sensors import build_unrecorded_failures_sensor
from harmonizer_dagster_tests.postgres_server import running_cluster

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"
PARTITIONS = f"{SOURCE}_files"
REPO = Path(__file__).parent.parent


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def instance(tmp_path):
    """An instance with the run retries both shipped instances configure, so each failed run
    carries Dagster's decision whether the daemon re-executes it (`dagster/will_retry`)."""
    shipped = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    assert shipped["run_retries"] == yaml.safe_load((REPO / "dagster.yaml").read_text())["run_retries"]
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home), overrides={"run_retries": shipped["run_retries"]}) as instance:
        yield instance


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setenv("HARMONIZER_RETRY_DELAY_SECONDS", "0.5")


def step_events(result, event_type: dg.DagsterEventType, op: str) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == event_type and e.step_key.endswith(op)]


def registry(url: str, schema: str = "harmonizer") -> list[tuple]:
    return open_warehouse(url, schema).query("SELECT status, error_message, records_imported FROM {schema}.sources")


# -- the classifier ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (botocore.exceptions.IncompleteReadError(actual_bytes=40013452, expected_bytes=146214024), True),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"), True),
        (botocore.exceptions.ClientError({"Error": {"Code": "SlowDown"}}, "GetObject"), True),
        (botocore.exceptions.ClientError({"ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject"), True),
        (botocore.exceptions.ClientError({"Error": {"Code": "AccessDenied"}}, "GetObject"), False),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.SerializationFailure(), True),
        (psycopg.errors.DeadlockDetected(), True),
        (psycopg.errors.AdminShutdown(), True),
        (psycopg.errors.DiskFull(), False),
        (psycopg.errors.UndefinedColumn(), False),
        (duckdb.IOException('Could not set lock on file "w.duckdb": Conflicting lock is held'), True),
        (duckdb.IOException("No space left on device"), False),
        (ValueError("line 3: bad header"), False),
        (FileNotFoundError("s3://b/k"), False),
    ],
)
def test_passing_faults_of_s3_and_the_warehouse_are_told_from_other_errors(error, transient):
    assert is_transient(error) is transient


def test_an_error_raised_from_a_passing_fault_is_a_passing_fault():
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as exc:
            raise RuntimeError("upload failed") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)


# -- S3 ----------------------------------------------------------------------------------------


class DyingEndpoint:
    """The S3 endpoint as clients reach it (a TCP front for a moto server), which can die in
    the middle of a response: the next response longer than `die_after` bytes is cut there,
    the connection closed, and the endpoint is back for the next request."""

    def __init__(self, target: str):
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.die_after: int | None = None
        self.deaths = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, response: bool) -> None:
        sent = 0
        try:
            while data := source.recv(16384):
                if response and self.die_after is not None and sent + len(data) > self.die_after:
                    sink.sendall(data[: self.die_after - sent])
                    self.die_after = None
                    self.deaths += 1
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def dying_s3(s3_endpoint, s3_bucket, monkeypatch, environment) -> Iterator[tuple[DyingEndpoint, str, object]]:
    endpoint = DyingEndpoint(s3_endpoint)
    monkeypatch.setenv("HARMONIZER_S3_ENDPOINT_URL", endpoint.url)
    bucket, client = s3_bucket
    yield endpoint, bucket, client
    endpoint.close()


def test_an_s3_endpoint_dying_mid_download_is_retried_in_the_run_and_the_rows_land(
    dying_s3, landing, instance, environment, quick_retries
):
    endpoint, bucket, client = dying_s3
    uri = f"s3://{bucket}/landing/{SOURCE}/{Q3}"
    client.put_object(Bucket=bucket, Key=f"landing/{SOURCE}/{Q3}", Body=(landing / SOURCE / Q3).read_bytes())
    instance.add_dynamic_partitions(PARTITIONS, [uri])
    endpoint.die_after = 40_000  # of a 146,165-byte object

    result = (
        build_definitions().resolve_job_def(f"load_{SOURCE}").execute_in_process(instance=instance, partition_key=uri)
    )

    assert result.success
    assert endpoint.deaths == 1
    assert len(step_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY, "_hash")) == 1
    warnings = [
        r.user_message for r in instance.all_logs(result.run_id) if "transient fault (attempt 1 of" in r.user_message
    ]
    assert warnings and ("IncompleteReadError" in warnings[0] or "ResponseStreamingError" in warnings[0])
    with duckdb.connect(str(environment), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM harmonizer.{SOURCE}").fetchone() == (988,)
        assert con.execute("SELECT status, records_imported FROM harmonizer.sources").fetchall() == [("completed", 988)]
    # The interrupted attempt's download is not what later steps read: only the whole object is staged.
    assert not list((environment.parent / "staging").rglob(f"*{Q3}"))


def test_a_backfill_range_of_s3_objects_retried_after_a_passing_fault_reports_each_file_once(
    dying_s3, landing, instance, environment, quick_retries
):
    """A passing fault in a backfill's range fails its step (here the hash step, which downloads
    each object) once every file had its turn; the retry takes the range again, and no file is
    reported twice."""
    endpoint, bucket, client = dying_s3
    lines = (landing / SOURCE / Q3).read_text().splitlines(keepends=True)
    bodies = {"small_1.csv": "".join(lines[:4]), "small_2.csv": "".join(lines[:1] + lines[4:7])}
    bodies[Q3] = (landing / SOURCE / Q3).read_text()
    uris = []
    for name, body in bodies.items():
        client.put_object(Bucket=bucket, Key=f"landing/{SOURCE}/{name}", Body=body.encode())
        uris.append(f"s3://{bucket}/landing/{SOURCE}/{name}")
    instance.add_dynamic_partitions(PARTITIONS, uris)
    endpoint.die_after = 40_000  # only the last object is that large

    ranged = {"dagster/asset_partition_range_start": uris[0], "dagster/asset_partition_range_end": uris[-1]}
    result = build_definitions().resolve_job_def(f"load_{SOURCE}").execute_in_process(instance=instance, tags=ranged)

    assert result.success
    assert endpoint.deaths == 1
    assert len(step_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY, "_hash")) == 1
    records = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    materialized = [(r.event_log_entry.dagster_event.asset_key.to_user_string(), r.partition_key) for r in records]
    # Each once: the retry did not report again what the first attempt had finished.
    assert sorted(materialized) == sorted((asset, uri) for uri in uris for asset in (SOURCE, f"{SOURCE}_published"))
    with duckdb.connect(str(environment), read_only=True) as con:
        loaded = con.execute("SELECT partition_key, status FROM harmonizer.sources ORDER BY source_id").fetchall()
    assert loaded == [(uri, "completed") for uri in uris]
    assert not list((environment.parent / "staging").rglob("*.csv")), "nothing left staged"


def test_an_object_that_is_not_there_fails_at_once_without_retries(dying_s3, instance, environment, quick_retries):
    _, bucket, _ = dying_s3
    uri = f"s3://{bucket}/landing/{SOURCE}/gone.csv"
    instance.add_dynamic_partitions(PARTITIONS, [uri])

    result = (
        build_definitions()
        .resolve_job_def(f"load_{SOURCE}")
        .execute_in_process(instance=instance, partition_key=uri, raise_on_error=False)
    )

    assert not result.success
    assert step_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY, "_hash") == []
    (failure,) = step_events(result, dg.DagsterEventType.STEP_FAILURE, "_hash")
    assert "FileNotFoundError" in failure.step_failure_data.error.message
    assert instance.get_run_by_id(result.run_id).tags["dagster/will_retry"] == "false", "a missing object stays missing"


def test_an_s3_object_where_s3_is_not_configured_fails_at_once_saying_what_to_set(instance, environment, monkeypatch):
    for name in ("HARMONIZER_S3_BUCKET", "HARMONIZER_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    uri = f"s3://landing/{SOURCE}/{Q3}"
    instance.add_dynamic_partitions(PARTITIONS, [uri])
    defs = build_definitions()
    assert "s3" not in defs.resources

    result = defs.resolve_job_def(f"load_{SOURCE}").execute_in_process(
        instance=instance, partition_key=uri, raise_on_error=False
    )

    (failure,) = step_events(result, dg.DagsterEventType.STEP_FAILURE, "_hash")
    assert failure.step_failure_data.error.message.startswith(
        f"dagster._core.definitions.events.Failure: {uri} is in S3, but this code location has no S3 configured: "
        "set HARMONIZER_S3_BUCKET or HARMONIZER_S3_ENDPOINT_URL"
    )
    assert instance.get_run_by_id(result.run_id).tags["dagster/will_retry"] == "false"


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture
def point_warehouse(monkeypatch, environment):
    """Points the code location's warehouse at a URL (the `environment` fixture's DuckDB file by default)."""

    def point_at(url: str) -> None:
        monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", url)

    return point_at


@contextlib.contextmanager
def private_database(server_url: str) -> Iterator[str]:
    """A database of its own, so the code location's `harmonizer` schema is this test's alone."""
    database = f"faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + database
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


@pytest.fixture(params=["duckdb", "postgres"])
def job_warehouse(request, environment, point_warehouse) -> Iterator[str]:
    """The code location's warehouse URL, on each backend, with the registry's tables created."""
    if request.param == "duckdb":
        url = f"duckdb:///{environment}"
        open_warehouse(url).migrate(build_definitions_specs())
        yield url
        return
    with private_database(request.getfixturevalue("postgres_url")) as url:
        point_warehouse(url)
        open_warehouse(url).migrate(build_definitions_specs())
        yield url


def _locked_until_killed(url: str, table: str, kill) -> threading.Thread:
    """Holds the table's lock from another session, so the stage step waits on it mid-transaction;
    `kill(pid)` is then run on the waiting backend."""
    ready = threading.Event()
    waiting: list[tuple[int, str]] = []

    def hold() -> None:
        holder = psycopg.connect(url)
        try:
            holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            ready.set()
            with psycopg.connect(url, autocommit=True) as watcher:
                waiting.extend(
                    wait_for(
                        lambda: watcher.execute(
                            "SELECT pid, query FROM pg_stat_activity "
                            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                        ).fetchall(),
                        120,
                        "the stage step to wait on the table",
                    )
                )
                kill(watcher, waiting[0][0])
        finally:
            # After a server stop the session is gone already.
            with contextlib.suppress(psycopg.Error):
                holder.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(30)
    thread.waiting = waiting  # type: ignore[attr-defined]
    return thread


def test_a_postgres_backend_killed_mid_stage_is_retried_to_completed(
    postgres_url, point_warehouse, instance, quick_retries
):
    with private_database(postgres_url) as url:
        point_warehouse(url)
        store = open_warehouse(url)
        store.migrate(build_definitions_specs())
        instance.add_dynamic_partitions(PARTITIONS, [Q3])
        terminate = lambda watcher, pid: watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))  # noqa: E731
        holder = _locked_until_killed(url, f"harmonizer.{SOURCE}", terminate)

        job = build_definitions().resolve_job_def(f"load_{SOURCE}")
        result = job.execute_in_process(instance=instance, partition_key=Q3)
        holder.join(30)

        assert result.success
        assert len(step_events(result, dg.DagsterEventType.STEP_UP_FOR_RETRY, "_stage")) == 1
        assert registry(url) == [("completed", None, 988)]
        assert store.query(f"SELECT count(*) FROM {{schema}}.{SOURCE}") == [(988,)]


def build_definitions_specs():
    from harmonizer_dagster.core.spec import load_specs
    from harmonizer_dagster_tests.conftest import SOURCES_DIR

    return [spec for spec in load_specs(SOURCES_DIR) if spec.name == SOURCE]


def test_a_postgres_restart_mid_stage_reports_its_cause_and_the_registry_check_records_it(
    point_warehouse, instance, quick_retries, monkeypatch
):
    # No second attempt: this run's error is what the stop did to the stage step.
    monkeypatch.setenv("HARMONIZER_STEP_RETRIES", "0")
    with running_cluster() as cluster:
        point_warehouse(cluster.url)
        specs = build_definitions_specs()
        open_warehouse(cluster.url).migrate(specs)
        instance.add_dynamic_partitions(PARTITIONS, [Q3])
        # The server goes down with the stage step waiting inside its transaction, and stays down
        # while the step records its failure and tries again.
        holder = _locked_until_killed(cluster.url, f"harmonizer.{SOURCE}", lambda watcher, pid: cluster.stop())

        result = (
            build_definitions()
            .resolve_job_def(f"load_{SOURCE}")
            .execute_in_process(instance=instance, partition_key=Q3, raise_on_error=False)
        )
        holder.join(30)

        assert not result.success
        (failure,) = step_events(result, dg.DagsterEventType.STEP_FAILURE, "_stage")
        chain = [failure.step_failure_data.error]
        while chain[-1].cause:
            chain.append(chain[-1].cause)
        cause = next(e for e in chain if e.cls_name == "AdminShutdown")
        assert "terminating connection due to administrator command" in cause.message
        assert "could not be recorded in the registry" in cause.message
        assert instance.get_run_by_id(result.run_id).tags["dagster/will_retry"] == "true", "the daemon retries it"

        cluster.start()
        assert registry(cluster.url) == [("processing", None, None)]
        sensor = build_unrecorded_failures_sensor(specs)
        resources = {"warehouse": build_resources()["warehouse"]}
        with dg.build_sensor_context(instance=instance, resources=resources) as tick:
            sensor(tick)
        ((status, message, _),) = registry(cluster.url)
        assert status == "failed"
        assert message.startswith(f"run {result.run_id} ended FAILURE without recording the outcome: ")
        assert "terminating connection due to administrator command" in message


# -- DuckDB ------------------------------------------------------------------------------------


HOLD_LOCK = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def hold_duckdb_lock(path: Path) -> subprocess.Popen:
    """Another process with the DuckDB file open for writing, until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_duckdb_file_locked_by_another_process_is_retried_until_it_is_free(
    environment, instance, quick_retries, monkeypatch
):
    # A session waits for a held file this long before it gives up and the step is retried.
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_LOCK_TIMEOUT", "1")
    open_warehouse(f"duckdb:///{environment}").migrate(build_definitions_specs())
    instance.add_dynamic_partitions(PARTITIONS, [Q3])
    holder = hold_duckdb_lock(environment)
    outcome: dict[str, dg.ExecuteInProcessResult] = {}
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    run = threading.Thread(
        target=lambda: outcome.update(result=job.execute_in_process(instance=instance, partition_key=Q3)),
        daemon=True,
    )
    run.start()

    def retried() -> bool:
        return any(
            instance.all_logs(r.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY) for r in instance.get_runs()
        )

    wait_for(retried, 60, "the hash step to fail on the lock and be retried")
    holder.stdin.close()
    holder.wait()
    run.join(120)

    assert outcome["result"].success
    assert registry(f"duckdb:///{environment}") == [("completed", None, 988)]


def test_the_next_run_of_a_source_records_what_a_run_that_ended_left_processing(
    job_warehouse, instance, quick_retries, landing
):
    job = build_definitions().resolve_job_def(f"load_{SOURCE}")
    instance.add_dynamic_partitions(PARTITIONS, ["gone.csv", Q3])
    lost = job.execute_in_process(instance=instance, partition_key="gone.csv", raise_on_error=False)
    assert not lost.success
    # What a run killed mid-load leaves: its version registered and still `processing`.
    store = open_warehouse(job_warehouse)
    (spec,) = build_definitions_specs()
    store.register_version(
        spec,
        partition_key="registry_2026-Q4.csv.gz",
        version="2026-Q4",
        file_name="registry_2026-Q4.csv.gz",
        file_uri=(landing / SOURCE / "registry_2026-Q4.csv.gz").as_uri(),
        file_hash="0" * 64,
        size_bytes=1,
        run_id=lost.run_id,
        fingerprint="",
    )

    assert job.execute_in_process(instance=instance, partition_key=Q3).success

    rows = dict(
        store.query("SELECT partition_key, status || ': ' || coalesce(error_message, '') FROM {schema}.sources")
    )
    assert rows[Q3] == "completed: "
    assert rows["registry_2026-Q4.csv.gz"].startswith(
        f"failed: run {lost.run_id} ended FAILURE without recording the outcome: {SOURCE}: no file gone.csv in "
    ), rows
