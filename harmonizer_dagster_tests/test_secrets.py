"""Warehouse and instance credentials from AWS Secrets Manager (a real endpoint over HTTP,
moto's server), never shown in logs or metadata."""

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import dagster as dg
import psycopg
import pytest
from dagster_aws.secretsmanager import SecretsManagerResource

from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.orchestration.aws import SecretWarehouseResource

pytestmark = pytest.mark.postgres
PASSWORD = "s3cr3t-" + uuid.uuid4().hex[:8]


def rds_secret(endpoint: str, postgres_url: str, role: str, dbname: str) -> str:
    """Stores the login as RDS writes it; returns the secret's name."""
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    name = f"harmonizer/{role}"
    login = {"username": role, "password": PASSWORD, "host": info["host"], "port": int(info.get("port", 5432))}
    client.create_secret(Name=name, SecretString=json.dumps({**login, "dbname": dbname}))
    return name


@pytest.fixture
def secret(s3_endpoint, s3_bucket, postgres_url):
    """An RDS-style secret for a login role with a password, on the test PostgreSQL server."""
    role = f"harmonizer_{uuid.uuid4().hex[:8]}"
    dbname = psycopg.conninfo.conninfo_to_dict(postgres_url)["dbname"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f'GRANT ALL ON DATABASE "{dbname}" TO {role}')
    yield rds_secret(s3_endpoint, postgres_url, role, dbname), role
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS harmonizer_secret_test CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS harmonizer_secret_test_stage CASCADE")
        conn.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_the_warehouse_connects_with_credentials_from_secrets_manager(secret, s3_endpoint):
    name, role = secret
    resource = SecretWarehouseResource(
        secret_id=name,
        schema_name="harmonizer_secret_test",
        secrets=SecretsManagerResource(endpoint_url=s3_endpoint, region_name="us-east-1"),
    )
    store = resource.open()
    store.migrate([])
    assert store.query("SELECT current_user")[0][0] == role
    assert PASSWORD not in store.description


def test_a_run_with_a_secret_warehouse_logs_no_secret(secret, s3_endpoint, monkeypatch, landing, tmp_path):
    name, _ = secret
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_SECRET_ID", name)
    monkeypatch.setenv("HARMONIZER_SECRETS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(landing))
    monkeypatch.setenv("HARMONIZER_STAGING_DIR", str(tmp_path / "staging"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("news_articles_files", ["news_2026-11-20.json"])
        result = (
            build_definitions()
            .resolve_job_def("load_news_articles")
            .execute_in_process(instance=instance, partition_key="news_2026-11-20.json")
        )
        assert result.success
        logged = [str(record) for record in instance.all_logs(result.run_id)]
    assert logged and not any(PASSWORD in line for line in logged)


@pytest.fixture
def instance_secret(s3_endpoint, s3_bucket, postgres_url):
    """A login role owning a database of its own for Dagster's storage, and its RDS-style secret."""
    role = f"dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f'CREATE DATABASE "{role}" OWNER {role}')
    yield rds_secret(s3_endpoint, postgres_url, role, role), role
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)')
        conn.execute(f"DROP ROLE {role}")


def run_with_secrets(
    *command: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Runs command under `harmonizer with-secrets`; a Dagster command is given a cwd of its own, where
    no .env of the repository's can change its instance."""
    harmonizer = str(Path(sys.executable).parent / "harmonizer")
    return subprocess.run(
        [harmonizer, "with-secrets", "--", *command], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_dagster_processes_get_the_instance_login_from_secrets_manager(
    instance_secret, s3_endpoint, postgres_url, tmp_path
):
    name, role = instance_secret
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((Path(__file__).parent.parent / "dagster.yaml").read_text())
    env = {key: value for key, value in os.environ.items() if not key.startswith("DAGSTER_PG_")}
    env |= {
        "DAGSTER_HOME": str(home),
        "HARMONIZER_INSTANCE_SECRET_ID": name,
        "HARMONIZER_SECRETS_ENDPOINT_URL": s3_endpoint,
    }
    started = run_with_secrets(str(Path(sys.executable).parent / "dagster"), "instance", "info", env=env, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert "PostgresRunStorage" in started.stdout
    assert PASSWORD not in started.stdout + started.stderr
    with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/" + role) as conn:
        owners = {owner for (owner,) in conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'runs'")}
    assert owners == {role}, "Dagster's storage was created with the login from the secret"


def test_without_a_secret_id_dagster_processes_keep_the_login_from_the_environment(monkeypatch):
    monkeypatch.delenv("HARMONIZER_INSTANCE_SECRET_ID", raising=False)
    monkeypatch.setenv("DAGSTER_PG_USER", "from-the-environment")
    monkeypatch.delenv("HARMONIZER_ENV_SECRET_ID", raising=False)
    started = run_with_secrets(sys.executable, "-c", "import os; print(os.environ['DAGSTER_PG_USER'])")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "from-the-environment"


def test_api_keys_reach_dagster_processes_from_secrets_manager(s3_endpoint, s3_bucket, monkeypatch):
    webhook = "https://hooks.slack.invalid/services/" + uuid.uuid4().hex
    client = boto3.client("secretsmanager", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"harmonizer/env/{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=name, SecretString=json.dumps({"HARMONIZER_SLACK_WEBHOOK_URL": webhook}))
    monkeypatch.delenv("HARMONIZER_INSTANCE_SECRET_ID", raising=False)
    monkeypatch.setenv("HARMONIZER_ENV_SECRET_ID", name)
    monkeypatch.setenv("HARMONIZER_SECRETS_ENDPOINT_URL", s3_endpoint)
    variable = "os.environ['HARMONIZER_SLACK_WEBHOOK_URL']"
    digest = f"import hashlib, os; print(hashlib.sha256({variable}.encode()).hexdigest())"
    started = run_with_secrets(sys.executable, "-c", digest)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == hashlib.sha256(webhook.encode()).hexdigest()

    # A secret may not change which code runs.
    client.put_secret_value(SecretId=name, SecretString=json.dumps({"PATH": "/tmp", "HARMONIZER_X": "1"}))
    refused = run_with_secrets(sys.executable, "-c", "print('started')")
    assert refused.returncode == 2 and "started" not in refused.stdout
    assert (
        refused.stderr.strip()
        == "with-secrets: the secret names variables not starting with HARMONIZER_ or DAGSTER_PG_: PATH"
    )


def test_a_login_secret_replaces_only_the_fields_it_holds(s3_endpoint, s3_bucket, monkeypatch):
    client = boto3.client("secretsmanager", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"harmonizer/login/{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=name, SecretString=json.dumps({"username": "dagster", "password": PASSWORD}))
    monkeypatch.setenv("HARMONIZER_INSTANCE_SECRET_ID", name)
    monkeypatch.delenv("HARMONIZER_ENV_SECRET_ID", raising=False)
    monkeypatch.setenv("HARMONIZER_SECRETS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("DAGSTER_PG_HOST", "db.lan")
    monkeypatch.setenv("DAGSTER_PG_DB", "dagster_prod")
    shown = "import os; print(*(os.environ[k] for k in ('DAGSTER_PG_USER', 'DAGSTER_PG_HOST', 'DAGSTER_PG_DB')))"
    started = run_with_secrets(sys.executable, "-c", shown)
    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["dagster", "db.lan", "dagster_prod"]

    missing = run_with_secrets(
        sys.executable, "-c", "print('started')", env={**os.environ, "HARMONIZER_INSTANCE_SECRET_ID": "nope"}
    )
    assert missing.returncode == 2 and "started" not in missing.stdout
    assert missing.stderr.startswith("with-secrets: ") and "Traceback" not in missing.stderr
