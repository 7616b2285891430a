"""`dagster dev` started in the background as documented stops, webserver, daemon and code servers
included, on `kill <pid>` (SIGTERM, which it handles as Ctrl-C)."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from harmonizer_dagster_tests.fleet import answers, free_port, wait_for

REPO = Path(__file__).parent.parent
DAGSTER = str(Path(sys.executable).parent / "dagster")


def test_dagster_dev_started_in_the_background_stops_on_sigterm(environment, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "HARMONIZER_AUTOMATION": "off"}
    # As a script starts it: without job control (`set -m`) a non-interactive shell starts a
    # background command with SIGINT ignored, and dagster dev, which maps SIGTERM to its SIGINT
    # handling, then ignores SIGTERM too.
    started = subprocess.run(
        [
            "bash",
            "-c",
            f'set -m; "{DAGSTER}" dev -m harmonizer_dagster -h 127.0.0.1 -p {port} >dev.log 2>&1 & echo $!',
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    dev = psutil.Process(int(started.stdout))
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/server_info"), 180, "the webserver")

        def services() -> list[psutil.Process]:
            children = dev.children(recursive=True)
            commands = [" ".join(child.cmdline()) for child in children]
            wanted = ("dagster_webserver", "dagster._daemon run", "grpc")
            return children if all(any(part in c for c in commands) for part in wanted) else []

        children = wait_for(services, 180, "the webserver, the daemon and their code servers")
        dev.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([dev, *children], timeout=60)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
        assert "Shutting down Dagster services" in (tmp_path / "dev.log").read_text()
    finally:
        if dev.is_running():
            os.killpg(dev.pid, signal.SIGKILL)
