"""The HTTP API as a client meets it: `harmonizer dq serve` in a process of its own on a free
loopback port, asked with httpx, with keys made by `harmonizer api-key create`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from harmonizer_dagster.web.dagster import DagsterError, job_location
from harmonizer_dagster_tests.fleet import answers, free_port, wait_for

BIN = Path(sys.executable).parent
REPO = Path(__file__).parent.parent


@dataclass
class ApiServer:
    process: subprocess.Popen
    base: str

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def memory(self, field: str) -> int:
        """A line of the server's /proc status in bytes: VmRSS now, VmHWM its peak so far."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process in a session of its own, so it is stopped with all it started."""
    with log.open("a") as output:
        return subprocess.Popen(
            command, env=env, cwd=log.parent, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_server(env: dict[str, str], log: Path) -> ApiServer:
    """Starts the server and waits until it answers its health endpoint."""
    port = free_port()
    process = spawn([str(BIN / "harmonizer"), "dq", "serve", "--port", str(port)], env, log)
    server = ApiServer(process, f"http://127.0.0.1:{port}/api/v1")
    wait_for(lambda: process.poll() is not None or answers(f"{server.base}/health"), 60, "the API to answer")
    assert process.poll() is None, log.read_text()[-2000:]
    return server


def start_webserver(env: dict[str, str], log: Path, job: str) -> tuple[subprocess.Popen, str]:
    """The Dagster webserver on the repository's workspace; returns once it serves `job`."""
    port = free_port()
    command = [str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    process = spawn(command, env, log)
    url = f"http://127.0.0.1:{port}"

    def serves_job() -> bool:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            return bool(job_location(url, job))
        except DagsterError:
            return False

    wait_for(serves_job, 120, "the webserver to load the code location")
    return process, url


def stop(process: subprocess.Popen) -> None:
    """Stops a process this harness started, with everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_server(server: ApiServer) -> None:
    stop(server.process)
