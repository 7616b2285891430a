"""The core knows nothing of Dagster; data flows one way, from core to the Dagster layer."""

import ast
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
