"""The UI over the embedded instance (`dagster dev`'s setup): the source asset's four ops, and
a loaded partition's metadata and checks. The same pages over the fleet are in test_fleet."""

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
from harmonizer_dagster_tests.ui import PARTITION, check_source_pages

REPO = Path(__file__).parent.parent


@pytest.fixture
def webserver(environment, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HARMONIZER_AUTOMATION", "off")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("business_registry_files", [PARTITION])
        job = build_definitions().resolve_job_def("load_business_registry")
        assert job.execute_in_process(instance=instance, partition_key=PARTITION).success
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
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_ui_shows_the_four_ops_and_a_partitions_metadata_and_checks(webserver):
    check_source_pages(webserver, "harmonizer_dagster", "ui")
