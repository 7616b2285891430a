"""Warehouse credentials from AWS Secrets Manager (a real endpoint over HTTP, moto's server),
never shown in logs or metadata."""

import json
import uuid

import boto3
import dagster as dg
import psycopg
import pytest
from dagster_aws.secretsmanager import SecretsManagerResource

from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.orchestration.resources import WarehouseResource

pytestmark = pytest.mark.postgres
PASSWORD = "s3cr3t-" + uuid.uuid4().hex[:8]


@pytest.fixture
def secret(s3_endpoint, s3_bucket, postgres_url):
    """An RDS-style secret for a login role with a password, on the test PostgreSQL server."""
    role = f"harmonizer_{uuid.uuid4().hex[:8]}"
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f'GRANT ALL ON DATABASE "{info["dbname"]}" TO {role}')
    client = boto3.client("secretsmanager", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"harmonizer/warehouse/{uuid.uuid4().hex[:8]}"
    client.create_secret(
        Name=name,
        SecretString=json.dumps(
            {
                "username": role,
                "password": PASSWORD,
                "host": info["host"],
                "port": int(info.get("port", 5432)),
                "dbname": info["dbname"],
            }
        ),
    )
    yield name, role
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS harmonizer_secret_test CASCADE")
        conn.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_the_warehouse_connects_with_credentials_from_secrets_manager(secret, s3_endpoint):
    name, role = secret
    resource = WarehouseResource(
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
