"""The documented command lines, run for real: `dagster job execute` and `dagster asset materialize`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest

REPO = Path(__file__).parent.parent
DAGSTER = str(Path(sys.executable).parent / "dagster")


def dagster(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([DAGSTER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture
def base_env(landing, tmp_path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HARMONIZER_LANDING_DIR": str(landing),
        "HARMONIZER_STAGING_DIR": str(tmp_path / "staging"),
    }


def test_register_then_materialize_one_partition_on_the_embedded_default(base_env, tmp_path):
    home = Path(base_env["DAGSTER_HOME"])
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    warehouse = tmp_path / "warehouse.duckdb"
    env = {**base_env, "HARMONIZER_WAREHOUSE_URL": f"duckdb:///{warehouse}"}

    dagster("job", "execute", "-m", "harmonizer_dagster", "-j", "register_file_versions", env=env, cwd=tmp_path)
    dagster(
        "asset",
        "materialize",
        "-m",
        "harmonizer_dagster",
        "--select",
        "business_registry",
        "--partition",
        "registry_2026-Q4.csv.gz",
        env=env,
        cwd=tmp_path,
    )

    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM harmonizer.business_registry").fetchone() == (988,)
        assert con.execute("SELECT partition_key, status FROM harmonizer.sources").fetchall() == [
            ("registry_2026-Q4.csv.gz", "completed")
        ]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert set(instance.get_dynamic_partitions("business_registry_files")) == {
            "registry_2026-Q3.csv",
            "registry_2026-Q4.csv.gz",
        }
        event = instance.get_latest_materialization_event(dg.AssetKey("business_registry"))
        assert event.asset_materialization.partition == "registry_2026-Q4.csv.gz"


@pytest.mark.postgres
def test_smoke_job_on_the_production_instance_and_postgres_warehouse(base_env, postgres_url, tmp_path):
    """The top-level dagster.yaml (dagster-postgres storage) with the PostgreSQL warehouse."""
    home = Path(base_env["DAGSTER_HOME"])
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    env = {
        **base_env,
        "HARMONIZER_WAREHOUSE_URL": postgres_url,
        "DAGSTER_PG_HOST": info["host"],
        "DAGSTER_PG_PORT": str(info.get("port", 5432)),
        "DAGSTER_PG_USER": info["user"],
        "DAGSTER_PG_PASSWORD": info.get("password", ""),
        "DAGSTER_PG_DB": info["dbname"],
    }
    dagster("job", "execute", "-m", "harmonizer_dagster", "-j", "smoke_test", env=env, cwd=tmp_path)

    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("SUCCESS",)], "run stored in PostgreSQL"
        loaded = conn.execute(
            "SELECT source_type, count(*) FROM harmonizer.sources WHERE status = 'completed' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert loaded == [("business_registry", 2), ("court_records", 1), ("news_articles", 1)]
        assert conn.execute("SELECT count(*) FROM harmonizer.business_registry").fetchone() == (999,)
        conn.execute("DROP SCHEMA harmonizer CASCADE")
