"""A fleet on one machine: a PostgreSQL-backed instance, two code servers standing in for two
Pis on their own loopback addresses, the daemon and the webserver, all real processes, and
the central machine's own code location (no sources; fleet-wide alerts to a real SMTP inbox).

Every process is started in its own session and stopped with its whole process group, and
only processes this harness started are ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import yaml

REPO = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
PIS = {"pi-a": ("127.0.0.2", "business_registry"), "pi-b": ("127.0.0.3", "court_records,news_articles")}
CENTRAL = "central"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    """Whether a server answers the URL with 200: what waiting for a webserver polls."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Fleet:
    root: Path
    server_url: str  # a PostgreSQL server the harness may create databases on
    landing: Path
    smtp_port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    def database_url(self, name: str) -> str:
        return self.server_url.rsplit("/", 1)[0] + "/" + name

    def start(self) -> Fleet:
        suffix = f"{os.getpid()}_{int(time.time())}"
        self.databases = {"dagster": f"fleet_dagster_{suffix}", "warehouse": f"fleet_warehouse_{suffix}"}
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            for name in self.databases.values():
                conn.execute(f'CREATE DATABASE "{name}"')
        self.home.mkdir(parents=True)
        self.config = production_instance_with_test_clocks()
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(self.config))
        info = psycopg.conninfo.conninfo_to_dict(self.database_url(self.databases["dagster"]))
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_PG_HOST": info["host"],
            "DAGSTER_PG_PORT": str(info.get("port", 5432)),
            "DAGSTER_PG_USER": info["user"],
            "DAGSTER_PG_PASSWORD": info.get("password", ""),
            "DAGSTER_PG_DB": info["dbname"],
            "HARMONIZER_WAREHOUSE_URL": self.database_url(self.databases["warehouse"]),
            "HARMONIZER_LANDING_DIR": str(self.landing),
            "HARMONIZER_AUTOMATION": "off",
            # The central location, which the webserver and daemon load from the package.
            "HARMONIZER_SOURCES": "none",
            "HARMONIZER_ALERTS": "fleet",
            "HARMONIZER_SMTP_HOST": "127.0.0.1",
            "HARMONIZER_SMTP_PORT": str(self.smtp_port),
            "HARMONIZER_ALERT_TO": "oncall@example.org",
        }
        workspace = {"load_from": [{"python_module": {"module_name": "harmonizer_dagster", "location_name": CENTRAL}}]}
        for name, (address, _) in PIS.items():
            self.ports[name] = free_port(address)
            self.start_pi(name)
            workspace["load_from"].append(
                {"grpc_server": {"host": address, "port": self.ports[name], "location_name": name}}
            )
        (self.root / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        self.ports["webserver"] = free_port()
        self._spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.root / "workspace.yaml")], {})
        self._spawn(
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                "-w",
                str(self.root / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.ports["webserver"]),
            ],
            {},
        )
        wait_for(self._locations_loaded, 120, "the webserver to load both locations")
        return self

    def start_pi(self, name: str) -> None:
        """Starts (or restarts) a Pi's code server on its own loopback address and port."""
        address, sources = PIS[name]
        command = [
            str(BIN / "dagster"),
            "api",
            "grpc",
            "-h",
            address,
            "-p",
            str(self.ports[name]),
            "-m",
            "harmonizer_dagster",
            "--location-name",
            name,
        ]
        extra = {
            "HARMONIZER_SOURCES": sources,
            "HARMONIZER_ALERTS": "off",
            "HARMONIZER_HOST": name,
            "HARMONIZER_STAGING_DIR": str(self.root / name / "staging"),
        }
        self._spawn(name, command, extra)
        wait_for(lambda: _accepts(address, self.ports[name]), 120, f"code server {name}")

    def _spawn(self, name: str, command: list[str], extra_env: dict[str, str]) -> None:
        log = (self.root / f"{name}.log").open("a")
        self.processes[name] = subprocess.Popen(
            command,
            env={**self.env, **extra_env},
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        """Stops a process and everything under it at once, as a power loss would."""
        process = self.processes.pop(name)
        tree = [process.pid] + [child.pid for child in _children(process.pid)]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name)
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            for name in self.databases.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['webserver']}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload
        return payload["data"]

    def _locations_loaded(self) -> bool:
        try:
            data = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                "locationOrLoadError { __typename } } } } }"
            )
        except OSError:
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return len(entries) == len(PIS) + 1 and all(
            e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )


def production_instance_with_test_clocks() -> dict[str, Any]:
    """The production dagster.yaml with run monitoring's clocks shortened, so a lost run is
    noticed in seconds rather than minutes; every other setting is the shipped one."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["run_monitoring"]["poll_interval_seconds"] = 2
    config["run_launcher"]["config"]["unreachable_timeout_seconds"] = 15
    config["run_coordinator"]["config"]["user_code_failure_retry_delay"] = 5
    return config


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
