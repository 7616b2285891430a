"""What steps print is kept where the production instance says: in S3 (a real S3 endpoint,
moto in server mode) when a bucket is configured, under $DAGSTER_HOME otherwise."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

REPO = Path(__file__).parent.parent


def home_with_production_compute_logs(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    production = yaml.safe_load((REPO / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump({"compute_logs": production["compute_logs"]}))
    return home


def test_step_output_goes_to_the_s3_bucket_when_one_is_configured(s3_bucket, s3_endpoint, environment, tmp_path):
    bucket, client = s3_bucket
    home = home_with_production_compute_logs(tmp_path)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HARMONIZER_COMPUTE_LOG_BUCKET": bucket,
        "HARMONIZER_S3_ENDPOINT_URL": s3_endpoint,
    }
    dagster = Path(sys.executable).parent / "dagster"
    subprocess.run(
        [str(dagster), "job", "execute", "-m", "harmonizer_dagster", "-j", "register_file_versions"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    (run,) = dg.DagsterInstance.from_config(str(home)).get_runs()
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    err_logs = [
        key for key in keys if key.startswith(f"dagster-compute-logs/storage/{run.run_id}/") and key.endswith(".err")
    ]
    assert err_logs, keys
    printed = client.get_object(Bucket=bucket, Key=err_logs[0])["Body"].read().decode()
    assert "business_registry: 2 file(s) landed, 2 newly registered" in printed


def test_step_output_stays_under_dagster_home_without_a_bucket(tmp_path, monkeypatch):
    monkeypatch.delenv("HARMONIZER_COMPUTE_LOG_BUCKET", raising=False)
    home = home_with_production_compute_logs(tmp_path)
    # Another folder than the instance's own, whose storage Dagster's default would use.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        manager = instance.compute_log_manager
        assert isinstance(manager, LocalComputeLogManager)
        assert Path(manager._base_dir) == tmp_path / "elsewhere" / "storage"
