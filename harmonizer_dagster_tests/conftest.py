"""Shared fixtures. Warehouse tests run against every backend in WAREHOUSES, like a destination matrix."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest
import yaml

from harmonizer_dagster.core.spec import SAFE_LOADER, SourceSpec, load_specs
from harmonizer_dagster.core.warehouse import Warehouse, open_warehouse
from harmonizer_dagster_tests.kafka_broker import Broker
from harmonizer_dagster_tests.postgres_server import fresh_database

REPO = Path(__file__).parent.parent
PACKAGE_DIR = REPO / "harmonizer_dagster"
SOURCES_DIR = PACKAGE_DIR / "sources"
# How the YAML parser in use words "owner: [unclosed": libyaml and pure-Python PyYAML differ.
UNCLOSED_LIST = (
    "did not find expected ',' or ']'"
    if SAFE_LOADER is not yaml.SafeLoader
    else "expected ',' or ']', but got '<stream end>'"
)
SAMPLES_DIR = PACKAGE_DIR / "samples"
# The registry sample every other file format is converted from.
SAMPLE = SAMPLES_DIR / "business_registry" / "registry_2026-Q3.csv"
WAREHOUSES = ["duckdb", "postgres"]


@pytest.fixture(scope="session", autouse=True)
def dagster_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Dagster instance of the test run's own for every process a test starts without naming one,
    so no test writes to an exported (production) instance nor to the quickstart's embedded one."""
    home = tmp_path_factory.mktemp("dagster_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own on a real server (started for the run when none is reachable)."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Kafka-protocol broker (Tansu, in memory) on a free loopback port, for the whole test run."""
    broker = Broker(tmp_path_factory.mktemp("kafka") / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def specs() -> dict[str, SourceSpec]:
    return {spec.name: spec for spec in load_specs(SOURCES_DIR)}


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    """A private copy of the shipped samples, so tests may add, change or delete files."""
    target = tmp_path / "landing"
    shutil.copytree(SAMPLES_DIR, target)
    return target


def warehouse_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "duckdb":
        return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def environment(monkeypatch, landing, tmp_path):
    """Points the code location at a private landing zone, staging folder and DuckDB file."""
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(landing))
    monkeypatch.setenv("HARMONIZER_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


@pytest.fixture(params=WAREHOUSES)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    """An empty warehouse: a DuckDB file, or a schema of its own in the PostgreSQL test database."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    store = open_warehouse(warehouse_url(request.param, tmp_path, request), schema)
    yield store
    if request.param == "postgres":
        drop_schemas(store)


def drop_schemas(store: Warehouse) -> None:
    """Drops a PostgreSQL warehouse's schemas: its tables and its stage."""
    store.query(f"DROP SCHEMA IF EXISTS {store.schema} CASCADE")
    store.query(f"DROP SCHEMA IF EXISTS {store.stage_schema} CASCADE")


def csv_spec(columns: dict, *, name: str = "t", natural_key: tuple[str, ...] = ("k",)) -> SourceSpec:
    """A CSV source declared inline, as its spec file would declare it."""
    from harmonizer_dagster.core.spec import parse_spec

    return parse_spec(
        {"name": name, "owner": "o", "format": "csv", "natural_key": list(natural_key), "columns": columns}
    )


def load_file(
    spec: SourceSpec, landing: Path, partition_key: str, store: Warehouse, staging: Path, run_id: str = "test"
):
    """Writes, audits and publishes one landed file, as the asset's ops and checks do."""
    from harmonizer_dagster.core.files import locate
    from harmonizer_dagster.core.pipeline import deduplicate_step, hash_step, validate_step

    store.migrate([spec])
    hashed = hash_step(spec, locate(landing, spec.name, partition_key), store, staging, run_id)
    validate_step(spec, hashed)
    deduplicate_step(spec, hashed)
    return write_audit_publish(spec, hashed, store, run_id)


def write_audit_publish(spec: SourceSpec, hashed, store: Warehouse, run_id: str):
    """Stages a validated and deduplicated version, audits it and publishes it unless a blocking
    check holds it. Returns what it came to, as the registry then holds it."""
    from harmonizer_dagster.core.pipeline import stage_step
    from harmonizer_dagster.core.publishing import audit, publish

    staged = stage_step(spec, hashed, store, run_id)
    if hashed.skipped or audit(store, spec, hashed.partition_key, run_id).held:
        return staged
    publish(store, spec, hashed.partition_key, run_id)
    counts = store.version_counts(hashed.source_id) or {}
    table_rows = int(store.query(f"SELECT count(*) FROM {store.table(spec.name)}")[0][0])
    return replace(staged, **{k: v for k, v in counts.items() if k.startswith("records_")}, table_rows=table_rows)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto in server mode) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> tuple[str, object]:
    """A fresh bucket and a boto3 client for it; AWS credentials are moto's dummies."""
    import boto3

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return bucket, client


def registry_rows(warehouse, spec):
    """The registry table's canonical columns, in key order."""
    names = ", ".join(c.name for c in spec.columns)
    return warehouse.query(f"SELECT {names} FROM {warehouse.table(spec.name)} ORDER BY corp_number")


def land(tmp_path, spec, name: str, data: bytes):
    """Lands `data` as a file of the source; returns the landing folder."""
    folder = tmp_path / "landing" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return tmp_path / "landing"


def load_sample(warehouse, tmp_path, spec, name: str, data: bytes):
    """Loads `data` as one file of the source; returns the table's rows and the version's counts."""
    load_file(spec, land(tmp_path, spec, name, data), name, warehouse, tmp_path / "staging")
    return registry_rows(warehouse, spec), warehouse.partition_counts(spec.name, name)


@pytest.fixture(scope="session")
def reference(specs, tmp_path_factory):
    """The sample as shipped, loaded into a DuckDB warehouse of its own: what every other form must give."""
    from harmonizer_dagster.core.warehouse import open_warehouse

    folder = tmp_path_factory.mktemp("reference")
    store = open_warehouse(f"duckdb:///{folder / 'w.duckdb'}", "reference")
    return load_sample(store, folder, specs["business_registry"], SAMPLE.name, SAMPLE.read_bytes())


def checks_evaluated(evaluations) -> dict[str, dict]:
    """Each data-quality check behind a source's asset check evaluations (blocking_checks,
    warning_checks), by name: its figures from the evaluation's metadata, and the severity,
    blocking flag and name of the asset check it belongs to."""
    found = {}
    for evaluation in evaluations:
        for name, value in evaluation.metadata.items():
            if isinstance(value, dg.JsonMetadataValue):
                found[name] = {
                    **value.value,
                    "severity": evaluation.severity,
                    "blocking": evaluation.blocking,
                    "asset_check": evaluation.check_name,
                }
    return found


# The real daemon on an embedded instance of a test's own (test_daemon.py, test_api.py).
@pytest.fixture
def instance_settings() -> dict:
    """What a test changes in the embedded instance's dagster.yaml, merged into it."""
    return {}


def merged(base: dict, changes: dict) -> dict:
    return {
        **base,
        **{k: merged(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in changes.items()},
    }


@pytest.fixture
def daemon_env(tmp_path, landing, instance_settings) -> dict[str, str]:
    """The environment of a daemon on a fresh embedded instance, landing folder and DuckDB file."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = merged(yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text()), instance_settings)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    # Create the SQLite storages before the daemon starts: the test reads them while it runs,
    # and two processes creating one at once can both stamp its schema version.
    with dg.DagsterInstance.from_config(str(home)):
        pass
    drop = tmp_path / "drop"
    (drop / "business_registry").mkdir(parents=True)
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HARMONIZER_LANDING_DIR": str(drop),
        "HARMONIZER_STAGING_DIR": str(tmp_path / "staging"),
        "HARMONIZER_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        # The tests hold the DuckDB file to keep a run busy: a session waiting for it gives up
        # after a second, and the step is retried.
        "HARMONIZER_WAREHOUSE_LOCK_TIMEOUT": "1",
    }


@pytest.fixture
def start_daemon(tmp_path):
    """Starts `dagster-daemon run` in a process group of its own: the daemon, its code server
    and run workers are stopped together, and nothing else on the machine is touched."""
    started: list[subprocess.Popen] = []
    log = (tmp_path / "daemon.log").open("a")

    def start(env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()
