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

from harmonizer_dagster_tests.fleet import answers, free_port, wait_for

BIN = Path(sys.executable).parent


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


def start_server(env: dict[str, str], log: Path) -> ApiServer:
    """Starts the server and waits until it answers its health endpoint."""
    port = free_port()
    with log.open("a") as output:
        process = subprocess.Popen(
            [str(BIN / "harmonizer"), "dq", "serve", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ApiServer(process, f"http://127.0.0.1:{port}/api/v1")
    wait_for(lambda: process.poll() is not None or answers(f"{server.base}/health"), 60, "the API to answer")
    assert process.poll() is None, log.read_text()[-2000:]
    return server


def stop_server(server: ApiServer) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
