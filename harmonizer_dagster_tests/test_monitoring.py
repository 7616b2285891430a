"""Monitoring: a real Prometheus (Debian's package, with the project's scrape config) scrapes
GET /metrics during and after real loads; the figures equal the warehouse's, progress rises
while a load runs, a killed load shows STALLED, and a scrape never fails a DuckDB load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
import yaml
from starlette.testclient import TestClient

from harmonizer_dagster.core.files import locate
from harmonizer_dagster.core.monitoring import OUTCOMES, ProgressReporter, loader_status, snapshot
from harmonizer_dagster.core.pipeline import Progress, hash_step, validate_step
from harmonizer_dagster.core.samples import registry_rows
from harmonizer_dagster.core.triage import Selection, act
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse
from harmonizer_dagster.web.metrics import create_metrics_app
from harmonizer_dagster_tests.conftest import SAMPLES_DIR, drop_schemas, load_file, warehouse_url
from harmonizer_dagster_tests.fleet import free_port
from harmonizer_dagster_tests.postgres_server import fresh_database

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


@pytest.fixture
def prometheus(endpoint, tmp_path) -> Iterator[str]:
    """Debian's Prometheus with the project's scrape config and rules, pointed at the endpoint,
    scraping every 250 ms into a storage folder of its own; its API's base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the monitoring tests need Prometheus: apt-get install prometheus (scripts/test.sh does)")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "250ms", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    target = urllib.parse.urlsplit(endpoint)
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target.netloc]}]
    config["scrape_configs"][0]["scrape_timeout"] = "250ms"
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
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for("Prometheus", lambda: _answers(f"http://127.0.0.1:{port}/-/ready"))
        yield api
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
    assert promql(prometheus, "harmonizer_versions") == {(("source", SOURCE), ("status", "completed")): 1.0}
    assert promql(prometheus, "harmonizer_load_duration_seconds_count") == {(("source", SOURCE),): 1.0}
    assert promql(prometheus, "harmonizer_load_records_processed") == {}, "no load runs any more"
    # A scrape held the warehouse now and then, and the load waited its turn rather than failing.
    assert promql(prometheus, "harmonizer_scrape_warehouse_busy") == {(): 0.0}


def test_the_alert_rules_and_the_scrape_config_load():
    rules = subprocess.run(
        ["promtool", "check", "rules", DEPLOY / "prometheus" / "alerts.yml"], capture_output=True, text=True
    )
    assert rules.returncode == 0 and "SUCCESS: 8 rules found" in rules.stdout, rules.stdout + rules.stderr
    config = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        capture_output=True,
        text=True,
        cwd=DEPLOY / "prometheus",
    )
    assert config.returncode == 0, config.stdout + config.stderr
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
    } <= names


def test_a_load_whose_worker_was_killed_shows_stalled_in_the_view_the_cli_and_the_metrics(deployment, endpoint):
    env = deployment | {"HARMONIZER_STALL_MINUTES": "0.05"}  # 3 s without a heartbeat
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
    stalled = wait_for("the STALLED version", lambda: loader_status(store, "STALLED"), timeout=30)
    assert [(r["source_type"], r["partition_key"], r["status"]) for r in stalled] == [(SOURCE, FILE, "processing")]
    assert 0 < stalled[0]["records_processed"] < 1006 and stalled[0]["records_expected"] > 0
    cli = subprocess.run([BIN / "harmonizer", "status", "--stalled"], env=env, capture_output=True, text=True)
    assert cli.returncode == 1 and f"{SOURCE:<20} {FILE:<28} STALLED" in cli.stdout, cli.stdout + cli.stderr
    metrics = get(endpoint)
    assert f'harmonizer_versions{{source="{SOURCE}",status="stalled"}} 1.0' in metrics
    assert f'harmonizer_load_records_processed{{partition="{FILE}",source="{SOURCE}"}}' in metrics


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
