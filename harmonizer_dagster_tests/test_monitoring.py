"""Monitoring: a real Prometheus (Debian's package, with the project's scrape config) scrapes
GET /metrics during and after real loads; the figures equal the warehouse's, progress rises
while a load runs, a killed load shows STALLED, and a scrape never fails a DuckDB load.
Alerting: the shipped rules fire in that Prometheus (a stalled load, a failed one, runs stuck
in the queue), and Debian's Alertmanager with the shipped routes e-mails them through an SMTP
relay and posts them to a Slack incoming webhook, both real servers on loopback."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from starlette.testclient import TestClient

from harmonizer_dagster.core.files import locate
from harmonizer_dagster.core.monitoring import OUTCOMES, ProgressReporter, loader_status, snapshot
from harmonizer_dagster.core.pipeline import Progress, hash_step, validate_step
from harmonizer_dagster.core.samples import registry_rows
from harmonizer_dagster.core.triage import Selection, act
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.web.metrics import create_metrics_app
from harmonizer_dagster_tests.conftest import SAMPLES_DIR, drop_schemas, load_file, warehouse_url
from harmonizer_dagster_tests.fleet import free_port
from harmonizer_dagster_tests.inbox import Inbox, smtp_server
from harmonizer_dagster_tests.postgres_server import fresh_database
from harmonizer_dagster_tests.webhook import Webhook, webhook_receiver

DEPLOY = Path(__file__).parent.parent / "deploy"
BIN = Path(sys.executable).parent
SOURCE, FILE = "business_registry", "registry_2026-Q3.csv"


def wait_for(what: str, check: Callable[[], object], timeout: float = 90) -> object:
    """Polls `check` until it returns something truthy: waits for a state, not a time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture(params=["duckdb", "postgres"])
def deployment(request, tmp_path) -> Iterator[dict[str, str]]:
    """The environment of a deployment: a landing area holding one sample file, staging, a
    warehouse of its own (schema harmonizer), a Dagster home and a short stall threshold."""
    landing = tmp_path / "landing" / SOURCE
    landing.mkdir(parents=True)
    shutil.copy(SAMPLES_DIR / SOURCE / FILE, landing / FILE)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).parent.parent),
        HARMONIZER_LANDING_DIR=str(tmp_path / "landing"),
        HARMONIZER_STAGING_DIR=str(tmp_path / "staging"),
        HARMONIZER_SOURCES=SOURCE,
        HARMONIZER_AUTOMATION="off",
        DAGSTER_HOME=str(home),
        # Checkpoints of 50 records: a 1,006-record file is about twenty of them.
        HARMONIZER_BATCH_ROWS="5",
        # Every checkpoint recorded: positions to see, however fast the machine.
        HARMONIZER_PROGRESS_SECONDS="0",
        HARMONIZER_METRICS_LOCK_WAIT="0.2",
    )
    if request.param == "duckdb":
        yield env | {"HARMONIZER_WAREHOUSE_URL": warehouse_url("duckdb", tmp_path, request)}
        return
    with fresh_database() as url:
        yield env | {"HARMONIZER_WAREHOUSE_URL": url}


@pytest.fixture
def endpoint(deployment) -> Iterator[str]:
    """`harmonizer metrics serve` on a free port; its /metrics URL."""
    port = free_port()
    server = subprocess.Popen(
        [BIN / "harmonizer", "metrics", "serve", "--port", str(port)],
        env=deployment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for("the metrics endpoint", lambda: _answers(url))
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _answers(url: str) -> bool:
    try:
        get(url)
    except OSError:
        return False
    return True


# Durations of the shipped configs a test shortens so that alerts fire and are delivered in
# seconds; nothing else of the rules or the routes is changed.
SHORT_DURATIONS = {
    "for": "1s",
    "scrape_interval": "250ms",
    "scrape_timeout": "250ms",
    "evaluation_interval": "1s",
    "group_wait": "1s",
    "group_interval": "1s",
    "repeat_interval": "1h",
}


def shortened(node: object) -> object:
    """`node` (a parsed config) with the durations named in SHORT_DURATIONS shortened."""
    if isinstance(node, dict):
        return {k: SHORT_DURATIONS[k] if k in SHORT_DURATIONS else shortened(v) for k, v in node.items()}
    if isinstance(node, list):
        return [shortened(item) for item in node]
    return node


def shipped(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "prometheus" / name).read_text())


@contextmanager
def running_prometheus(endpoint: str, tmp_path: Path, alertmanager: str | None = None) -> Iterator[str]:
    """Debian's Prometheus with the project's scrape config and rules, their durations shortened,
    scraping `endpoint` every 250 ms into a storage folder of its own and sending alerts to
    `alertmanager` (host:port) when given; its API's base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the monitoring tests need Prometheus: apt-get install prometheus (scripts/test.sh does)")
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(shortened(shipped("alerts.yml"))))
    config = shortened(shipped("prometheus.yml") | {"rule_files": [str(tmp_path / "alerts.yml")]})
    config["scrape_configs"][0]["scrape_timeout"] = "250ms"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [urllib.parse.urlsplit(endpoint).netloc]}]
    if alertmanager is None:
        del config["alerting"]
    else:
        config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("Prometheus", lambda: _answers(f"http://127.0.0.1:{port}/-/ready"))
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture
def prometheus(endpoint, tmp_path) -> Iterator[str]:
    with running_prometheus(endpoint, tmp_path) as api:
        yield api


@dataclass
class Receivers:
    """Where Alertmanager delivers: an SMTP relay's inbox and a Slack incoming webhook."""

    inbox: Inbox
    slack: Webhook
    # Where Prometheus sends alerts: the Alertmanager's host:port.
    address: str
    smtp_login: tuple[str, str]


@pytest.fixture
def alertmanager(tmp_path) -> Iterator[Receivers]:
    """Debian's Alertmanager with the project's config, its durations shortened, delivering to a
    local SMTP relay that takes the login from the password file, and to a local Slack webhook
    whose URL is in the webhook file."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail(
            "the alerting tests need Alertmanager: apt-get install prometheus-alertmanager (scripts/test.sh does)"
        )
    config = shortened(shipped("alertmanager.yml"))
    settings = config["global"]
    login = (settings["smtp_auth_username"], secrets.token_urlsafe(12))
    with smtp_server(login) as (inbox, smtp_port), webhook_receiver() as slack:
        # The secrets are files, as in production; the relay is the local one, without TLS.
        secret_files = tmp_path / "secrets"
        secret_files.mkdir()
        (secret_files / "smtp_password").write_text(login[1])
        (secret_files / "slack_webhook_url").write_text(slack.url)
        for key in ("smtp_auth_password_file", "slack_api_url_file"):
            settings[key] = str(secret_files / Path(settings[key]).name)
        settings |= {"smtp_smarthost": f"127.0.0.1:{smtp_port}", "smtp_require_tls": False}
        config["templates"] = [str(DEPLOY / "prometheus" / name) for name in config["templates"]]
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{port}",
                # A single Alertmanager: no cluster port to collide with another test's.
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for("Alertmanager", lambda: _answers(f"http://127.0.0.1:{port}/-/ready"))
            yield Receivers(inbox, slack, f"127.0.0.1:{port}", login)
        finally:
            server.terminate()
            server.wait(30)


def promql(api: str, query: str) -> dict[tuple, float]:
    """The instant vector of `query`, by its labels other than job and instance."""
    answer = json.loads(get(f"{api}/query?{urllib.parse.urlencode({'query': query})}"))
    assert answer["status"] == "success", answer
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("job", "instance", "__name__"))): float(
            r["value"][1]
        )
        for r in answer["data"]["result"]
    }


def load(env: dict[str, str]) -> subprocess.Popen:
    """The main job over the landing area, as a process (group) of its own."""
    return subprocess.Popen(
        [BIN / "dagster", "job", "execute", "-m", "harmonizer_dagster", "-j", "ingest_landing"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def store_of(env: dict[str, str]) -> Warehouse:
    return open_warehouse(env["HARMONIZER_WAREHOUSE_URL"])


def registry(env: dict[str, str]) -> dict:
    """What the warehouse itself says: per-outcome sums, issues by type and severity, dead letters."""
    store = store_of(env)
    with store.transaction():
        columns = ", ".join(f"sum({c})" for c in OUTCOMES.values())
        sums = store.query(f"SELECT {columns} FROM {{schema}}.sources WHERE status = 'completed'")[0]
        issues = store.query("SELECT issue_type, severity, count(*) FROM {schema}.data_quality_issues GROUP BY 1, 2")
        dead = store.query("SELECT count(*) FROM {schema}.failed_records WHERE NOT reprocessed")[0][0]
    return {
        "records": {((("outcome", o), ("source", SOURCE))): float(v) for o, v in zip(OUTCOMES, sums, strict=True)},
        "issues": {(("issue_type", t), ("severity", s), ("source", SOURCE)): float(n) for t, s, n in issues},
        "dead_letters": float(dead),
    }


def scraped_position(prometheus: str) -> int | None:
    """The running load's position as Prometheus last scraped it, once a scrape could read the
    warehouse (a load paused inside a DuckDB transaction holds the file)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        busy = promql(prometheus, "harmonizer_scrape_warehouse_busy")
        position = promql(prometheus, "harmonizer_load_records_processed")
        if position and busy == {(): 0.0}:
            return int(next(iter(position.values())))
        time.sleep(0.1)
    return None


def test_prometheus_sees_a_load_progress_and_its_counts_equal_the_warehouse(deployment, prometheus):
    # A file of 20,000 records in checkpoints of 500: forty positions to see.
    frame, _ = registry_rows(0, 20_000, seed=3)
    frame.write_csv(Path(deployment["HARMONIZER_LANDING_DIR"]) / SOURCE / FILE)
    # Prometheus scrapes its first a while after it starts: the load begins once it has.
    wait_for("Prometheus's first scrape", lambda: promql(prometheus, "up") == {(): 1.0})
    running = load({**deployment, "HARMONIZER_BATCH_ROWS": "50"})
    # The load is paused now and then, so Prometheus scrapes it between checkpoints however fast
    # the machine: each pause shows the position the load had reached.
    positions: list[int] = []
    while running.poll() is None:
        if not promql(prometheus, "harmonizer_load_records_processed"):
            time.sleep(0.02)  # no checkpoint yet: the load is still starting
            continue
        os.killpg(running.pid, signal.SIGSTOP)
        try:
            position = scraped_position(prometheus)
        finally:
            os.killpg(running.pid, signal.SIGCONT)
        if position and (not positions or position != positions[-1]):
            positions.append(position)
        time.sleep(0.02)
    assert running.wait(300) == 0, running.stderr.read() if running.stderr else ""
    # Over the load, the scraped position rose through several checkpoints.
    assert positions == sorted(positions) and len(positions) >= 3, positions
    expected = registry(deployment)

    def scraped_final() -> dict | None:
        records = promql(prometheus, "harmonizer_records_total")
        return records if records == expected["records"] else None

    assert wait_for("the completed load's counts in Prometheus", scraped_final) == expected["records"]
    assert promql(prometheus, "harmonizer_issues_total") == expected["issues"]
    assert sum(promql(prometheus, "harmonizer_dead_letters_pending").values()) == expected["dead_letters"]
    assert promql(prometheus, "harmonizer_open_issues") == {(("source", SOURCE),): sum(expected["issues"].values())}
    assert promql(prometheus, "harmonizer_versions") == {
        (("source", SOURCE), ("status", status)): count
        for status, count in {"completed": 1.0, "failed": 0.0, "stalled": 0.0}.items()
    }
    assert promql(prometheus, "harmonizer_load_duration_seconds_count") == {(("source", SOURCE),): 1.0}
    assert promql(prometheus, "harmonizer_load_records_processed") == {}, "no load runs any more"
    # A scrape held the warehouse now and then, and the load waited its turn rather than failing.
    assert promql(prometheus, "harmonizer_scrape_warehouse_busy") == {(): 0.0}


def test_the_alert_rules_the_scrape_config_and_the_alertmanager_config_load():
    rules = subprocess.run(
        ["promtool", "check", "rules", DEPLOY / "prometheus" / "alerts.yml"], capture_output=True, text=True
    )
    assert rules.returncode == 0 and "SUCCESS: 10 rules found" in rules.stdout, rules.stdout + rules.stderr
    config = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        capture_output=True,
        text=True,
        cwd=DEPLOY / "prometheus",
    )
    assert config.returncode == 0, config.stdout + config.stderr
    if shutil.which("amtool") is None:
        pytest.fail("the alerting tests need amtool: apt-get install prometheus-alertmanager (scripts/test.sh does)")
    routes = subprocess.run(
        ["amtool", "check-config", "alertmanager.yml"], capture_output=True, text=True, cwd=DEPLOY / "prometheus"
    )
    assert routes.returncode == 0 and "1 templates" in routes.stdout, routes.stdout + routes.stderr
    names = {
        rule["alert"]
        for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert {
        "HarmonizerLoadStalled",
        "HarmonizerLoadFailed",
        "HarmonizerSourceStale",
        "HarmonizerRejectedRateJump",
        "HarmonizerDeadLettersPilingUp",
        "HarmonizerRunQueueDeep",
        "HarmonizerRunQueueStuck",
    } <= names


def test_every_alert_rule_fires_on_its_condition_and_not_short_of_it():
    cases = sorted((Path(__file__).parent / "prometheus").glob("alerts*_test.yml"))
    tested = {
        check["alertname"]
        for path in cases
        for case in yaml.safe_load(path.read_text())["tests"]
        for check in case["alert_rule_test"]
    }
    assert tested == {rule["alert"] for group in shipped("alerts.yml")["groups"] for rule in group["rules"]}
    result = subprocess.run(
        ["promtool", "test", "rules", *(path.name for path in cases)],
        capture_output=True,
        text=True,
        cwd=cases[0].parent,
    )
    assert result.returncode == 0 and result.stdout.count("SUCCESS") == len(cases) == 2, result.stdout + result.stderr


def stall_a_load(env: dict[str, str]) -> Warehouse:
    """Starts the landing area's load and kills its worker once it has checkpointed: a version
    left processing, STALLED after HARMONIZER_STALL_MINUTES. The warehouse it was loading."""
    running = load(env)
    store = store_of(env)
    store.lock_wait = 0.2

    def position() -> int:
        try:
            rows = store.query("SELECT max(records_processed) FROM {schema}.sources WHERE status = 'processing'")
        except Exception:  # not migrated yet, or the load holds the DuckDB file
            return 0
        return int(rows[0][0] or 0)

    wait_for("the load's first checkpoint", position)
    os.killpg(running.pid, signal.SIGKILL)
    running.wait(30)
    store.lock_wait = None
    return store


def test_a_load_whose_worker_was_killed_shows_stalled_in_the_view_the_cli_and_the_metrics(deployment, endpoint):
    env = deployment | {"HARMONIZER_STALL_MINUTES": "0.05"}  # 3 s without a heartbeat
    store = stall_a_load(env)
    stalled = wait_for("the STALLED version", lambda: loader_status(store, "STALLED"), timeout=30)
    assert [(r["source_type"], r["partition_key"], r["status"]) for r in stalled] == [(SOURCE, FILE, "processing")]
    assert 0 < stalled[0]["records_processed"] < 1006 and stalled[0]["records_expected"] > 0
    cli = subprocess.run([BIN / "harmonizer", "status", "--stalled"], env=env, capture_output=True, text=True)
    assert cli.returncode == 1 and f"{SOURCE:<20} {FILE:<28} STALLED" in cli.stdout, cli.stdout + cli.stderr
    metrics = get(endpoint)
    assert f'harmonizer_versions{{source="{SOURCE}",status="stalled"}} 1.0' in metrics
    assert f'harmonizer_load_records_processed{{partition="{FILE}",source="{SOURCE}"}}' in metrics


@pytest.mark.parametrize("deployment", ["duckdb"], indirect=True)
def test_a_stalled_load_and_a_failing_source_are_emailed_and_posted_to_slack(
    deployment, endpoint, alertmanager, tmp_path
):
    with running_prometheus(endpoint, tmp_path, alertmanager.address) as api:
        wait_for("Prometheus's first scrape", lambda: promql(api, "up") == {(): 1.0})
        stall_a_load(deployment | {"HARMONIZER_STALL_MINUTES": "0.05"})
        stalled = f"[FIRING] HarmonizerLoadStalled {SOURCE}"
        wait_for("the stalled load's e-mail", lambda: stalled in alertmanager.inbox.subjects(), timeout=120)
        # The next file of the source is no gzip file: its load fails.
        landing = Path(deployment["HARMONIZER_LANDING_DIR"]) / SOURCE
        (landing / FILE).unlink()
        (landing / "registry_2026-Q4.csv.gz").write_bytes(b"not gzip")
        assert load(deployment).wait(300) == 1
        failed = f"[FIRING] HarmonizerLoadFailed {SOURCE}"
        wait_for("the failed load's e-mail", lambda: failed in alertmanager.inbox.subjects(), timeout=120)
        wait_for(
            "both Slack posts",
            lambda: {stalled, failed} <= {p["attachments"][0]["title"] for p in alertmanager.slack.posts},
        )
    # Alertmanager's e-mails are multipart: their text part is the message.
    mails = {
        message["Subject"]: (recipients, message.get_body(("plain",)).get_content())
        for recipients, message in alertmanager.inbox.messages
    }
    assert mails[stalled][0] == ["oncall@example.org"]
    # Alertmanager logged in to the relay with the password from its file, for every e-mail.
    assert alertmanager.inbox.logins == [alertmanager.smtp_login] * len(alertmanager.inbox.messages)
    assert f"{SOURCE}: 1 load(s) stalled" in mails[stalled][1] and "harmonizer status --stalled" in mails[stalled][1]
    assert f"{SOURCE}: a load failed in the last 15 minutes" in mails[failed][1]
    # Slack's incoming-webhook format: one attachment with the title and the same text.
    posts = {p["attachments"][0]["title"]: p["attachments"][0] for p in alertmanager.slack.posts}
    assert posts[stalled]["text"].splitlines() == mails[stalled][1].splitlines()
    assert posts[failed]["text"].splitlines() == mails[failed][1].splitlines()
    assert set(alertmanager.slack.content_types) == {"application/json"}


def queue_runs(instance: dg.DagsterInstance, count: int) -> list[str]:
    """Submits `count` runs of register_file_versions to the instance's run coordinator (Dagster's
    queued one) as the webserver does; with no daemon running, they stay QUEUED. Their ids."""
    job = build_definitions().resolve_job_def("register_file_versions")
    code = RepositoryPythonOrigin(sys.executable, ModuleCodePointer("harmonizer_dagster", "defs", None))
    location = GrpcServerCodeLocationOrigin(host="localhost", port=4000, location_name="harmonizer_dagster")
    run_ids = []
    for _ in range(count):
        run = instance.add_run(
            DagsterRun(
                job_name=job.name,
                run_id=str(uuid.uuid4()),
                job_code_origin=JobPythonOrigin(job.name, code),
                remote_job_origin=RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job.name),
            )
        )
        instance.submit_run(run.run_id, workspace=None)
        run_ids.append(run.run_id)
    return run_ids


def firing(api: str) -> set[str]:
    return {dict(labels)["alertname"] for labels in promql(api, 'ALERTS{alertstate="firing"}')}


@pytest.mark.parametrize("deployment", ["duckdb"], indirect=True)
def test_runs_waiting_in_the_queue_with_none_started_fire_the_run_queue_alerts(deployment, prometheus):
    wait_for("Prometheus's first scrape", lambda: promql(prometheus, "up") == {(): 1.0})
    assert promql(prometheus, "harmonizer_run_queue_oldest_seconds") == {(): 0.0}
    assert not firing(prometheus) & {"HarmonizerRunQueueDeep", "HarmonizerRunQueueStuck"}
    instance = dg.DagsterInstance.from_config(deployment["DAGSTER_HOME"])
    run_ids = queue_runs(instance, 21)
    assert instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])) == 21
    wait_for(
        "both run queue alerts",
        lambda: {"HarmonizerRunQueueDeep", "HarmonizerRunQueueStuck"} <= firing(prometheus),
        timeout=60,
    )
    assert promql(prometheus, 'harmonizer_dagster_runs{status="queued"}') == {(("status", "queued"),): 21.0}
    waited = promql(prometheus, "harmonizer_run_queue_oldest_seconds")[()]
    assert 0 < waited < 120
    wait_for(
        "the oldest run's wait to grow", lambda: promql(prometheus, "harmonizer_run_queue_oldest_seconds")[()] > waited
    )
    # The oldest run starts: the queue moves and is one short of deep; neither alert holds.
    instance.handle_run_event(
        run_ids[0], dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="register_file_versions")
    )
    wait_for(
        "both run queue alerts to resolve",
        lambda: not firing(prometheus) & {"HarmonizerRunQueueDeep", "HarmonizerRunQueueStuck"},
        timeout=60,
    )
    assert promql(prometheus, 'harmonizer_dagster_runs{status=~"queued|started"}') == {
        (("status", "queued"),): 20.0,
        (("status", "started"),): 1.0,
    }


def test_a_scrape_while_a_load_holds_the_duckdb_file_serves_the_last_values_and_says_busy(tmp_path, specs):
    landing = tmp_path / "landing"
    shutil.copytree(SAMPLES_DIR, landing)
    path = tmp_path / "warehouse.duckdb"
    store = open_warehouse(f"duckdb:///{path}")
    load_file(specs[SOURCE], landing, FILE, store, tmp_path / "staging")
    scraper = open_warehouse(f"duckdb:///{path}")
    client = TestClient(create_metrics_app(scraper))
    first = client.get("/metrics").text
    assert "harmonizer_scrape_warehouse_busy 0.0" in first
    records = [line for line in first.splitlines() if line.startswith("harmonizer_records_total")]
    # Another process holds the file, as a load does while it publishes.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = client.get("/metrics")
        assert busy.status_code == 200 and "harmonizer_scrape_warehouse_busy 1.0" in busy.text
        assert [line for line in busy.text.splitlines() if line.startswith("harmonizer_records_total")] == records
    finally:
        holder.communicate("")
    assert "harmonizer_scrape_warehouse_busy 0.0" in client.get("/metrics").text
    # Between scrapes the endpoint holds nothing: a load opens the file at once.
    duckdb.connect(str(path)).close()


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_tallies_follow_loads_triage_and_reloads(kind, specs, landing, tmp_path, request):
    store = open_warehouse(warehouse_url(kind, tmp_path, request), f"t_{uuid.uuid4().hex[:10]}")
    spec = specs[SOURCE]
    load_file(spec, landing, FILE, store, tmp_path / "staging")
    load_file(spec, landing, "registry_2026-Q4.csv.gz", store, tmp_path / "staging")

    def truth() -> tuple[dict, int, int]:
        issues = {
            (t, s): int(n)
            for t, s, n in store.query(
                "SELECT issue_type, severity, count(*) FROM {schema}.data_quality_issues GROUP BY 1, 2"
            )
        }
        pending = store.query("SELECT count(*) FROM {schema}.data_quality_issues WHERE resolution_status = 'pending'")
        dead = store.query("SELECT count(*) FROM {schema}.failed_records WHERE NOT reprocessed")
        return issues, int(pending[0][0]), int(dead[0][0])

    def figures() -> tuple[dict, int, int]:
        found = snapshot(store).sources[SOURCE]
        return found.issues, found.open_issues, sum(found.dead_letters.values())

    assert figures() == truth() and truth()[1] > 0
    act(store, Selection(issue_type="invalid_date"), "ignore", actor="steward")
    assert figures() == truth()
    # Reloading a version (a new rule, here none: the file with its staging removed) replaces its tallies.
    store.query("UPDATE {schema}.sources SET processing_fingerprint = 'old'")
    load_file(spec, landing, FILE, store, tmp_path / "staging")
    assert figures() == truth()
    if kind == "postgres":
        drop_schemas(store)


@pytest.mark.parametrize("record_every_s", [0.0, 3600.0])
def test_a_load_records_its_first_checkpoint_at_once_and_later_ones_once_their_interval_has_passed(
    record_every_s, warehouse, specs, landing, tmp_path
):
    spec = specs[SOURCE]
    warehouse.migrate([spec])
    hashed = hash_step(spec, locate(landing, SOURCE, FILE), warehouse, tmp_path / "staging", "progress")
    logged: list[str] = []
    reporter = ProgressReporter(warehouse, hashed.source_id, FILE, logged.append, record_every_s=record_every_s)
    seen: list[int] = []

    def checkpoint(progress: Progress) -> None:
        seen.append(progress.records)
        reporter(progress)

    validate_step(spec, hashed, batch_rows=5, on_progress=checkpoint)
    assert len(seen) > 10, seen
    [(recorded, expected)] = warehouse.query(
        "SELECT records_processed, records_expected FROM {schema}.sources WHERE source_id = %s", (hashed.source_id,)
    )
    # Every checkpoint is recorded when the interval is nil; only the first within an hour.
    assert recorded == (seen[-1] if record_every_s == 0 else seen[0])
    assert expected > 0
    assert logged == [], "a load shorter than the log interval logs no progress line"
