"""A PostgreSQL server for the tests: the one already running, or a throwaway cluster.

pg_ctl refuses to run as root, so a throwaway cluster runs as the `postgres` user (through
runuser) with its data in a folder that user owns. Nothing here ever skips: a test run that
cannot get a server fails, so CI can never go green without the PostgreSQL tests.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or (
        [shutil.which("pg_ctl")] if shutil.which("pg_ctl") else []
    )
    if not found:
        raise RuntimeError("no PostgreSQL server is reachable and no PostgreSQL binaries (pg_ctl) are installed")
    return Path(found[-1]).parent


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class ThrowawayCluster:
    """A cluster of its own on a free loopback port, which a test may stop and start again."""

    def __init__(self) -> None:
        self.bin_dir = _binaries()
        self.data = Path(tempfile.mkdtemp(prefix="harmonizer-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run(
            _as_postgres([str(self.bin_dir / "initdb"), "-D", str(self.data / "db"), "-U", "postgres", "-A", "trust"]),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._pg_ctl("-l", str(self.data / "log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        """Stops the server as a restart does: every session is ended, open transactions rolled back."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data / "db"), *args]),
            check=True,
            capture_output=True,
        )


@contextmanager
def running_cluster() -> Iterator[ThrowawayCluster]:
    """initdb + pg_ctl start on a free loopback port; stopped and deleted afterwards."""
    cluster = ThrowawayCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        subprocess.run(
            _as_postgres([str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.data / "db"), "-m", "fast", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(cluster.data, ignore_errors=True)


@contextmanager
def throwaway_cluster() -> Iterator[str]:
    """A running throwaway cluster's URL."""
    with running_cluster() as cluster:
        yield cluster.url


@contextmanager
def fresh_database() -> Iterator[str]:
    """A fresh database for this test run on a reachable server; dropped afterwards."""
    admin_url = os.environ.get("HARMONIZER_TEST_POSTGRES_URL", DEFAULT_URL)
    with _existing(admin_url) if _reachable(admin_url) else throwaway_cluster() as server_url:
        name = f"harmonizer_test_{os.getpid()}_{int(time.time())}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server_url.rsplit("/", 1)[0] + "/" + name
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _existing(url: str) -> Iterator[str]:
    yield url
