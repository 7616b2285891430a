"""Housekeeping keeps the instance and the staging disk flat without changing what the UI
shows of an asset: each partition's materialized or failed status is the same after it."""

import os
import time
from pathlib import Path

import dagster as dg
import pytest

from harmonizer_dagster.core.housekeeping import sweep_staging
from harmonizer_dagster.orchestration.housekeeping import housekeeping
from harmonizer_dagster.orchestration.resources import LandingZone

PARTITIONS = dg.StaticPartitionsDefinition(["a", "b", "c"])


@dg.asset(partitions_def=PARTITIONS, config_schema={"fail": bool})
def loaded(context: dg.AssetExecutionContext) -> None:
    if context.op_execution_context.op_config["fail"]:
        raise RuntimeError("a bad file")


@dg.op
def triage_something() -> None:
    pass


@dg.job
def triage_job() -> None:
    triage_something()


def materialize(instance: dg.DagsterInstance, partition: str, fail: bool = False) -> str:
    result = dg.materialize(
        [loaded],
        instance=instance,
        partition_key=partition,
        run_config={"ops": {"loaded": {"config": {"fail": fail}}}},
        raise_on_error=False,
    )
    return result.run_id


def partition_status(instance: dg.DagsterInstance) -> tuple[set[str], set[str]]:
    """What the asset's partitions page shows: the materialized partitions, and the partitions
    whose latest attempt after their latest materialization failed."""
    key = dg.AssetKey("loaded")
    attempts = instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(
        key
    )
    failed = set()
    for partition, (run_id, _) in attempts.items():
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status == dg.DagsterRunStatus.FAILURE:
            failed.add(partition)
    return instance.get_materialized_partitions(key), failed


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        yield instance


def test_housekeeping_deletes_old_runs_no_partition_status_needs_and_keeps_the_page_unchanged(instance, tmp_path):
    first_a = materialize(instance, "a")
    latest_a = materialize(instance, "a")
    failed_b = materialize(instance, "b", fail=True)
    first_c = materialize(instance, "c")
    failed_c = materialize(instance, "c", fail=True)  # c's latest attempt failed: c shows failed
    triage = triage_job.execute_in_process(instance=instance).run_id
    before = partition_status(instance)
    assert before == ({"a", "c"}, {"b", "c"})

    staging = tmp_path / "staging"
    (staging / "loaded" / "abandoned-version").mkdir(parents=True)
    (staging / "loaded" / "abandoned-version" / "batch-0.parquet").write_bytes(b"x" * 100)
    result = housekeeping.execute_in_process(
        instance=instance,
        resources={"landing": LandingZone(landing_dir=str(tmp_path / "landing"), staging_dir=str(staging))},
        run_config={"ops": {"sweep": {"config": {"run_history_days": 0, "step_output_days": 0, "staging_days": 0}}}},
    )
    assert result.success
    remaining = {r.run_id for r in instance.get_runs()} - {result.run_id}
    assert remaining == {latest_a, failed_b, first_c, failed_c}, "only the superseded run and the triage run went"
    assert first_a not in remaining and triage not in remaining
    assert partition_status(instance) == before
    assert not (staging / "loaded" / "abandoned-version").exists()


def test_recent_runs_and_staging_in_use_are_kept(instance, tmp_path):
    materialize(instance, "a")
    materialize(instance, "a")
    staging = tmp_path / "staging"
    (staging / "loaded" / "resumable").mkdir(parents=True)
    result = housekeeping.execute_in_process(
        instance=instance,
        resources={"landing": LandingZone(landing_dir=str(tmp_path / "landing"), staging_dir=str(staging))},
    )
    assert result.success
    assert len(instance.get_runs()) == 3, "runs younger than the history kept stay"
    assert (staging / "loaded" / "resumable").exists()


def test_a_staging_folder_goes_only_once_nothing_in_it_changed_for_the_days_kept(tmp_path):
    old = tmp_path / "source" / "old-version"
    touched = tmp_path / "source" / "still-loading"
    download = tmp_path / "source" / "_downloads" / "part-file.csv"
    for folder in (old, touched, download.parent):
        folder.mkdir(parents=True, exist_ok=True)
    (old / "batch-0.parquet").write_bytes(b"x" * 10)
    (touched / "batch-0.parquet").write_bytes(b"y" * 10)
    download.write_bytes(b"z" * 5)
    ten_days_ago = time.time() - 10 * 86400
    for path in (old, old / "batch-0.parquet", touched, download):
        os.utime(path, (ten_days_ago, ten_days_ago))
    swept = sweep_staging(tmp_path, older_than_days=7)
    assert (swept.entries, swept.bytes) == (2, 15)
    assert not old.exists() and not download.exists()
    assert touched.exists(), "a checkpoint written a moment ago keeps its version's staging"
    assert sweep_staging(Path(tmp_path / "missing"), 7).entries == 0
