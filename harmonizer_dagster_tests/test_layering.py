"""The core knows nothing of Dagster; data flows one way, from core to the Dagster layer."""

import ast
import os
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).parent.parent / "harmonizer_dagster" / "core"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_modules_import_neither_dagster_nor_the_dagster_layer():
    for path in CORE.rglob("*.py"):
        for module in imported_modules(path):
            assert not module.startswith(("dagster", "harmonizer_dagster.orchestration", "harmonizer_dagster.defin")), (
                f"{path.name} imports {module}"
            )


def test_importing_the_core_does_not_load_dagster():
    code = "import sys, harmonizer_dagster.core.pipeline; print('dagster' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_a_code_location_without_aws_settings_does_not_load_dagster_aws_nor_boto():
    aws_settings = ("HARMONIZER_S3_BUCKET", "HARMONIZER_S3_ENDPOINT_URL", "HARMONIZER_WAREHOUSE_SECRET_ID")
    env = {name: value for name, value in os.environ.items() if name not in aws_settings}
    code = (
        "import sys; from harmonizer_dagster.definitions import defs; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('dagster_aws', 'boto'))}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert loaded.stdout == "[]\n"
