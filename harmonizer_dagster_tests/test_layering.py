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


# Loads the code location, then reads and validates the registry sample as a run's steps do.
READ_AND_VALIDATE = """
import sys
from pathlib import Path
from harmonizer_dagster.core.reading import ReadResult, read_batches
from harmonizer_dagster.core.spec import load_specs
from harmonizer_dagster.core.validation import SpecValidator
from harmonizer_dagster.definitions import defs
package = Path(sys.modules["harmonizer_dagster"].__file__).parent
spec = {s.name: s for s in load_specs(package / "sources")}["business_registry"]
batches = read_batches(spec, package / "samples" / "business_registry" / "registry_2026-Q3.csv", 500, ReadResult())
print(sum(SpecValidator(spec).validate(batch).accepted.height for batch in batches))
print(sorted({m.split(".")[0] for m in sys.modules if m.startswith(("dagster_aws", "boto", "pandas", "psycopg"))}))
"""


def test_a_run_without_aws_settings_loads_neither_dagster_aws_boto_pandas_nor_psycopg():
    """dagster-aws and boto3 are for S3 and Secrets Manager, psycopg for PostgreSQL; pandas (which
    the dev extra installs) the pipeline never uses: each would cost every process its imports."""
    aws_settings = ("HARMONIZER_S3_BUCKET", "HARMONIZER_S3_ENDPOINT_URL", "HARMONIZER_WAREHOUSE_SECRET_ID")
    env = {name: value for name, value in os.environ.items() if name not in aws_settings}
    env["HARMONIZER_WAREHOUSE_URL"] = "duckdb:///unused.duckdb"
    run = subprocess.run([sys.executable, "-c", READ_AND_VALIDATE], env=env, capture_output=True, text=True, check=True)
    accepted, loaded = run.stdout.splitlines()
    assert int(accepted) > 900, "the sample was read and validated"
    assert loaded == "[]"
