"""The UI over the embedded instance (`dagster dev`'s setup): the source asset's ops, a loaded
partition's metadata and checks, and a backfill's run of a range of files, whose every step
did its work. The same pages over the fleet are in test_fleet."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster_tests.fleet import answers, free_port, wait_for
from harmonizer_dagster_tests.ui import PARTITION, check_range_run, check_source_pages

REPO = Path(__file__).parent.parent
# A backfill's range: the shipped next quarter and a file made beside it.
RANGE = ["registry_2026-Q4.csv.gz", "registry_2027-Q1.csv"]


@pytest.fixture
def webserver(environment, landing, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HARMONIZER_AUTOMATION", "off")
    # The next quarter, as a file of half the records, beside the shipped one: a range of two.
    lines = (landing / "business_registry" / PARTITION).read_text().splitlines(keepends=True)
    (landing / "business_registry" / "registry_2027-Q1.csv").write_text("".join(lines[:500]))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("business_registry_files", [PARTITION, *RANGE])
        job = build_definitions().resolve_job_def("load_business_registry")
        assert job.execute_in_process(instance=instance, partition_key=PARTITION).success
        ranged = {"dagster/asset_partition_range_start": RANGE[0], "dagster/asset_partition_range_end": RANGE[-1]}
        result = job.execute_in_process(instance=instance, tags=ranged)
        assert result.success
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-m",
            "harmonizer_dagster",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=dict(os.environ),
        cwd=tmp_path,
        stdout=(tmp_path / "web.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/server_info"), 120, "the webserver")
        yield f"http://127.0.0.1:{port}", result.run_id
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_ui_shows_the_ops_a_partitions_metadata_and_checks_and_every_step_of_a_backfills_range(webserver):
    url, range_run = webserver
    check_source_pages(url, "harmonizer_dagster", "ui")
    check_range_run(url, range_run, RANGE, "ui")
