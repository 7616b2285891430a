"""The documented command lines, run for real: `dagster job execute` and `dagster asset materialize`,
and `harmonizer`'s answers to the failures a person can act on."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest

from harmonizer_dagster.cli import main
from harmonizer_dagster.core.secrets import redact, secret_values
from harmonizer_dagster.core.spec import FORMATS
from harmonizer_dagster_tests.conftest import SOURCES_DIR, UNCLOSED_LIST

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

    def materialize(asset: str) -> None:
        select = ["--select", asset, "--partition", "registry_2026-Q4.csv.gz"]
        dagster("asset", "materialize", "-m", "harmonizer_dagster", *select, env=env, cwd=tmp_path)

    materialize("business_registry")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM harmonizer.business_registry").fetchone() == (0,), "staged only"
        assert con.execute("SELECT status FROM harmonizer.sources").fetchall() == [("staged",)]
    # Publishing is its own asset: materialized now, it moves the audited version into the table.
    materialize("business_registry_published")

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


DG = str(Path(sys.executable).parent / "dg")


def terminal_lines(result: subprocess.CompletedProcess) -> list[str]:
    return (result.stdout + result.stderr).splitlines()


def test_a_run_at_a_terminal_shows_its_info_messages_and_debug_on_request(base_env, tmp_path):
    """On the embedded instance a run prints what each file came to, no DEBUG event stream and
    no warning from the definitions; `dg launch` runs the same job as `dagster job execute`."""
    home = Path(base_env["DAGSTER_HOME"])
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    env = {**base_env, "HARMONIZER_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}"}
    first = dagster("job", "execute", "-m", "harmonizer_dagster", "-j", "ingest_landing", env=env, cwd=tmp_path)
    assert not [line for line in terminal_lines(first) if " - DEBUG - " in line or "BetaWarning" in line]

    def launch(*extra: str) -> subprocess.CompletedProcess:
        command = [DG, "launch", "--job", "ingest_landing", "--target-path", str(REPO), *extra]
        # As from an activated virtualenv, which `dg` otherwise warns about.
        activated = {**env, "VIRTUAL_ENV": sys.prefix}
        result = subprocess.run(command, env=activated, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    again = terminal_lines(launch())
    assert [line for line in again if " - INFO - ingest_landing - " not in line] == []
    skipped = [line for line in again if "_hash - " in line and "skipped: already loaded" in line]
    assert len(skipped) == 4 and len(again) < 20, again

    (tmp_path / "debug.yaml").write_text("loggers:\n  console:\n    config:\n      log_level: DEBUG\n")
    debug = terminal_lines(launch("-c", str(tmp_path / "debug.yaml")))
    assert any(" - DEBUG - " in line and "STEP_START" in line for line in debug)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="ingest_landing"))
        assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 3


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
        conn.execute("DROP SCHEMA harmonizer_stage CASCADE")


def harmonizer(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_specs_lists_every_error_of_every_spec_at_once(tmp_path, capsys):
    shutil.copy(SOURCES_DIR / "court_records.yaml", tmp_path)
    registry = (SOURCES_DIR / "business_registry.yaml").read_text()
    (tmp_path / "business_registry.yaml").write_text(registry.replace("format: csv", "format: xml\ncolour: red", 1))
    (tmp_path / "news.yml").write_text("name: news\nowner: [unclosed\n")
    code, out, err = harmonizer(capsys, "check-specs", str(tmp_path))
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        f"{tmp_path / 'business_registry.yaml'}, line 6: field 'format': 'xml' is not one of {', '.join(FORMATS)}",
        f"{tmp_path / 'business_registry.yaml'}, line 7: field 'colour': unknown field",
        f"{tmp_path / 'news.yml'}, line 3: not valid YAML: {UNCLOSED_LIST}",
        "3 errors in 2 specs; 1 spec OK",
    ]


def test_check_specs_checks_the_configured_folder_by_default(monkeypatch, capsys):
    monkeypatch.delenv("HARMONIZER_SOURCES_DIR", raising=False)
    assert harmonizer(capsys, "check-specs") == (0, "3 specs OK\n", "")
    monkeypatch.setenv("HARMONIZER_SOURCES_DIR", "/no/such/folder")
    missing = "harmonizer check-specs: /no/such/folder: sources folder does not exist\n"
    assert harmonizer(capsys, "check-specs") == (1, "", missing)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://nobody:s3cret-pw@127.0.0.1:1/x", 'connection failed: connection to server at "127.0.0.1"'),
        # The driver quotes the offending part of a malformed URL: here, the password.
        ("postgresql://nobody:s3cret pw@127.0.0.1:1/x", 'unexpected spaces found in "***"'),
        ("mysql://nobody:s3cret-pw@db/x", "warehouse URL must start with duckdb:// or postgresql://"),
    ],
)
def test_an_unusable_warehouse_is_one_line_without_the_password(monkeypatch, capsys, url, expected):
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", url)
    code, out, err = harmonizer(capsys, "summary")
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith(f"harmonizer summary: {expected}")
    assert "s3cret" not in out + err and "Traceback" not in err


def test_a_missing_duckdb_file_is_reported_not_created(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "nowhere" / "warehouse.duckdb"
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", f"duckdb:///{missing}")
    code, _, err = harmonizer(capsys, "summary")
    assert (code, err.splitlines()) == (
        1,
        [f"harmonizer summary: no warehouse at {missing}: nothing loaded yet, or HARMONIZER_WAREHOUSE_URL is wrong"],
    )
    assert not missing.parent.exists()


def test_verbose_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", "postgresql://nobody@127.0.0.1:1/x")
    with pytest.raises(psycopg.OperationalError):
        main(["--verbose", "summary"])


def test_redact_masks_passwords_in_urls_keyword_strings_and_the_environment():
    secrets = secret_values({"HARMONIZER_WAREHOUSE_URL": "postgresql://u:p%40ss word@h/x", "SMTP_PASSWORD": "hunter22"})
    assert secrets == {"p%40ss word", "p@ss word", "hunter22"}
    text = "postgresql://u:p%40ss word@h/x; password='a b' host=h; https://app:tok3n@s3.local/b; p@ss word; hunter22"
    assert redact(text, secrets) == "postgresql://u:***@h/x; password=*** host=h; https://app:***@s3.local/b; ***; ***"
