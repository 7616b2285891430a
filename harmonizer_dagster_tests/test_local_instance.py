"""Which Dagster instance a command started in the repository uses: an exported DAGSTER_HOME always,
the embedded one (.dagster_home) the quickstart sets up only when none is exported."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
DAGSTER = str(Path(sys.executable).parent / "dagster")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The files the embedded instance's set-up reads, laid out as in the repository, with the
    production dagster.yaml at the top as there."""
    root = tmp_path / "clone"
    (root / "scripts").mkdir(parents=True)
    (root / "deploy" / "local").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "local_instance.sh", root / "scripts")
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", root / "deploy" / "local")
    shutil.copy(REPO / "dagster.yaml", root)
    return root


def instance_home(cwd: Path, **exported: str) -> str:
    """The DAGSTER_HOME `dagster instance info` reports when started in cwd."""
    env = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"} | exported
    info = subprocess.run([DAGSTER, "instance", "info"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr[-3000:]
    return next(line.split(": ", 1)[1] for line in info.stdout.splitlines() if line.startswith("$DAGSTER_HOME: "))


def test_an_exported_dagster_home_wins_and_the_embedded_one_is_the_default(clone, tmp_path):
    # What the quickstart wrote before: a plain line, which won over an exported DAGSTER_HOME.
    (clone / ".env").write_text(f"HARMONIZER_ALERTS=off\nDAGSTER_HOME={clone / '.dagster_home'}\n")
    subprocess.run([clone / "scripts" / "local_instance.sh"], check=True)
    subprocess.run([clone / "scripts" / "local_instance.sh"], check=True)

    env_lines = (clone / ".env").read_text().splitlines()
    assert env_lines[0] == "HARMONIZER_ALERTS=off"
    assert [line for line in env_lines if line.startswith("DAGSTER_HOME=")] == [
        f'DAGSTER_HOME="${{DAGSTER_HOME:-{clone / ".dagster_home"}}}"'
    ]
    assert instance_home(clone) == str(clone / ".dagster_home")
    assert (clone / ".dagster_home" / "dagster.yaml").read_text() == (REPO / "deploy/local/dagster.yaml").read_text()

    production = tmp_path / "production_home"
    production.mkdir()
    assert instance_home(clone, DAGSTER_HOME=str(production)) == str(production)


def test_a_dagster_home_line_of_the_users_own_is_kept(clone, tmp_path):
    own = f"DAGSTER_HOME={tmp_path / 'mine'}"
    (clone / ".env").write_text(own + "\n")
    subprocess.run([clone / "scripts" / "local_instance.sh"], check=True)
    assert (clone / ".env").read_text().splitlines() == [own]
