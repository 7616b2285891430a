"""The peer tools as the benchmarks run them, on the registry file: dlt merging pyarrow batches
on corp_number, and a Sling replication (mode incremental, primary key corp_number). The
library path (pipeline.py) runs them as scripts, the product path (product.py) through
dagster-dlt and dagster-sling; both take their configuration from here.

Each function imports its tool when called: a case imports only what it uses.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TABLE = "registry"
# dlt's settings for a timed run: no telemetry, errors only.
DLT_ENVIRONMENT = {"RUNTIME__DLTHUB_TELEMETRY": "false", "RUNTIME__LOG_LEVEL": "ERROR"}


def column_names(file: Path) -> list[str]:
    """The file's header as snake_case names: "Corp Number" is corp_number."""
    with file.open(newline="") as handle:
        return [re.sub(r"\W", "_", h.lower()) for h in next(csv.reader(handle))]


def registry_source(file: Path) -> Any:
    """A dlt source of one resource: the file read as pyarrow batches of text columns, merged
    on corp_number."""
    import dlt
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    columns = column_names(file)

    @dlt.resource(name=TABLE, write_disposition="merge", primary_key="corp_number")
    def registry() -> Iterator[pa.RecordBatch]:
        yield from pa_csv.open_csv(
            file,
            read_options=pa_csv.ReadOptions(column_names=columns, skip_rows=1, block_size=32 << 20),
            convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string())),
        )

    @dlt.source(name=TABLE)
    def source() -> Any:
        return registry

    return source()


def dlt_pipeline(url: str, pipelines_dir: Path) -> Any:
    """A dlt pipeline into the DuckDB file or PostgreSQL database of `url`, dataset dlt_merge."""
    import dlt

    if url.startswith("duckdb:///"):
        destination = dlt.destinations.duckdb(url.removeprefix("duckdb:///"))
    else:
        parts = urlsplit(url)
        if parts.password is None:  # dlt insists on a password, which trust or peer authentication ignores
            url = parts._replace(
                netloc=f"{parts.username or 'postgres'}:unused@{parts.hostname or 'localhost'}:{parts.port or 5432}"
            ).geturl()
        destination = dlt.destinations.postgres(url)
    return dlt.pipeline(
        pipeline_name="bench", destination=destination, dataset_name="dlt_merge", pipelines_dir=str(pipelines_dir)
    )


def dlt_rows(pipeline: Any) -> int:
    """The rows the pipeline's last run normalized into the registry table."""
    return pipeline.last_trace.last_normalize_info.row_counts[TABLE]


def sling_replication(file: Path) -> dict[str, Any]:
    """The file into the registry table of the connection TARGET, incremental on corp_number;
    every column text, as dlt loads them (Sling would otherwise read corp_number "000123" as the
    number 123)."""
    stream = {"object": f"sling.{TABLE}", "columns": {"*": "string"}, "meta": {"dagster": {"asset_key": TABLE}}}
    return {
        "source": "LOCAL",
        "target": "TARGET",
        "defaults": {"mode": "incremental", "primary_key": ["corp_number"]},
        "streams": {f"file://{file}": stream},
    }


def sling_connection(url: str) -> dict[str, str]:
    """The Sling connection of a DuckDB or PostgreSQL URL. DuckDB is fed through a named pipe:
    Sling's default, an HTTP stream, needs DuckDB's httpfs extension, which it downloads."""
    if url.startswith("duckdb:///"):
        return {"type": "duckdb", "instance": url.removeprefix("duckdb:///"), "copy_method": "named_pipes"}
    return {"type": "postgres", "url": url + ("&" if "?" in url else "?") + "sslmode=disable"}


def sling_environment(home: Path) -> dict[str, str]:
    """What the Sling binary needs on a machine that reaches only package registries: the binary
    of the sling-linux-amd64 package (the sling package downloads one on first use), the DuckDB
    CLI of the duckdb-cli package (Sling downloads one too), its built-in extensions only, no
    telemetry, its home in `home`. Variables already set win."""
    defaults = {
        "SLING_BINARY": _package_file("sling_linux_amd64", "bin/sling-linux-amd64"),
        "DUCKDB_PATH": _package_file("duckdb_cli", "duckdb"),
        "DUCKDB_USE_INSTALLED_EXTENSIONS": "true",
        "SLING_DISABLE_TELEMETRY": "true",
        "SLING_HOME_DIR": str(home),
    }
    return {**defaults, **{name: os.environ[name] for name in defaults if name in os.environ}}


def sling_cli_environment(home: Path, url: str) -> dict[str, str]:
    """sling_environment plus the TARGET connection, as the Sling command line reads it."""
    return {**sling_environment(home), "TARGET": json.dumps(sling_connection(url))}


def _package_file(package: str, name: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install -e '.[bench]'")
    return str(Path(next(iter(spec.submodule_search_locations))) / name)
