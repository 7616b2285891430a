"""Backups of the warehouse and of a PostgreSQL Dagster instance, and their restore.

A DuckDB warehouse is copied while this process holds the file: DuckDB admits one process per
file, so no load writes while the copy is taken, and a load that wants the file waits its turn
as it waits for any other. A PostgreSQL warehouse's schemas (the tables and their stage) and a
PostgreSQL instance's database are dumped with pg_dump, which reads one snapshot while loads go
on. Every backup is a folder with a manifest saying what it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.duckdb import DuckDBWarehouse
from harmonizer_dagster.core.warehouse.tables import stage_schema

MANIFEST = "manifest.json"
DUCKDB_COPY = "warehouse.duckdb"
WAREHOUSE_DUMP = "warehouse.pgdump"
INSTANCE_DUMP = "instance.pgdump"


class BackupError(RuntimeError):
    """A backup or restore that could not be done, saying why and what to do."""


@dataclass(frozen=True)
class Manifest:
    created_at: str
    warehouse: str  # duckdb | postgresql
    schemas: list[str]
    instance: bool


def _is_postgres(warehouse: Warehouse) -> bool:
    # By its module, not its class: importing the class imports psycopg, which a process on a
    # DuckDB warehouse never needs.
    return type(warehouse).__module__.endswith(".postgres")


def instance_url() -> str | None:
    """The PostgreSQL Dagster instance's database, from the variables dagster.yaml reads (None
    on the embedded SQLite instance)."""
    names = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
    if not os.environ.get("DAGSTER_PG_DB"):
        return None
    import psycopg

    host, port, user, password, db = (os.environ.get(name, "") for name in names)
    return psycopg.conninfo.make_conninfo(host=host, port=port or "5432", user=user, password=password, dbname=db)


def backup(warehouse: Warehouse, folder: Path, instance_url: str | None = None) -> Manifest:
    """Writes a backup of the warehouse (and the instance's database, given its URL) into a new folder."""
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: back up into a new folder")
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if isinstance(warehouse, DuckDBWarehouse):
            _copy_duckdb(warehouse, partial / DUCKDB_COPY)
            kind = "duckdb"
        elif _is_postgres(warehouse):
            schemas = [warehouse.schema_name, stage_schema(warehouse.schema_name)]
            _pg_dump(warehouse.url, partial / WAREHOUSE_DUMP, schemas)
            kind = "postgresql"
        else:
            raise BackupError(f"no backup for {warehouse.description}")
        if instance_url:
            _pg_dump(instance_url, partial / INSTANCE_DUMP, [])
        schemas = [warehouse.schema_name, stage_schema(warehouse.schema_name)]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = Manifest(stamp, kind, schemas, instance=bool(instance_url))
        (partial / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        if folder.exists():
            folder.rmdir()
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def restore(warehouse: Warehouse, folder: Path, instance_url: str | None = None) -> Manifest:
    """Puts the warehouse (and the instance's database, given its URL) back as the backup holds
    it. Stop loads first (`HARMONIZER_AUTOMATION=off`, or the sensors stopped): what they wrote
    since the backup is replaced."""
    manifest = read_manifest(folder)
    if isinstance(warehouse, DuckDBWarehouse):
        if manifest.warehouse != "duckdb":
            raise BackupError(f"{folder} holds a {manifest.warehouse} warehouse; this warehouse is DuckDB")
        _restore_duckdb(warehouse, folder / DUCKDB_COPY)
    elif _is_postgres(warehouse):
        if manifest.warehouse != "postgresql":
            raise BackupError(f"{folder} holds a {manifest.warehouse} warehouse; this warehouse is PostgreSQL")
        warehouse.query(f"DROP SCHEMA IF EXISTS {warehouse.stage_schema} CASCADE")
        warehouse.query(f"DROP SCHEMA IF EXISTS {warehouse.schema} CASCADE")
        _pg_restore(warehouse.url, folder / WAREHOUSE_DUMP)
    if instance_url:
        if not manifest.instance:
            raise BackupError(f"{folder} holds no instance backup (back up with --instance)")
        _pg_restore(instance_url, folder / INSTANCE_DUMP, clean=True)
    return manifest


def read_manifest(folder: Path) -> Manifest:
    try:
        return Manifest(**json.loads((folder / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BackupError(f"{folder} is no backup of this platform (no readable {MANIFEST}): {exc}") from None


def prune(root: Path, keep: int) -> list[Path]:
    """Removes all but the newest `keep` backups under `root` (named by their time); returns them."""
    backups = sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).exists()) if root.is_dir() else []
    doomed = backups[: max(0, len(backups) - keep)]
    for folder in doomed:
        shutil.rmtree(folder)
    return doomed


def _copy_duckdb(warehouse: DuckDBWarehouse, target: Path) -> None:
    with warehouse.held_file() as connection:
        connection.execute("CHECKPOINT")  # everything in the file itself, none in its log
        shutil.copyfile(warehouse.path, target)


def _restore_duckdb(warehouse: DuckDBWarehouse, copy: Path) -> None:
    incoming = warehouse.path.with_name(f".{warehouse.path.name}.restoring")
    shutil.copyfile(copy, incoming)
    with warehouse.held_file() as connection:
        connection.execute("CHECKPOINT")
    # The file is free again: the copy takes its place in one rename, its empty log with it.
    log = warehouse.path.with_name(warehouse.path.name + ".wal")
    log.unlink(missing_ok=True)
    os.replace(incoming, warehouse.path)


def _postgres_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed: apt-get install postgresql-client (the server's major version)")
    return found


def _pg_dump(url: str, target: Path, schemas: list[str]) -> None:
    command = [_postgres_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={target}"]
    command += [f"--schema={schema}" for schema in schemas]
    _run(command, url, "pg_dump")


def _pg_restore(url: str, dump: Path, clean: bool = False) -> None:
    command = [_postgres_tool("pg_restore"), "--no-owner", "--single-transaction", "--exit-on-error"]
    command += ["--clean", "--if-exists"] if clean else []
    _run([*command, str(dump)], url, "pg_restore")


def _run(command: list[str], url: str, tool: str) -> None:
    """Runs a PostgreSQL tool on the database of `url`. The password goes in the tool's
    environment, never on its command line, where any process could read it."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url)
    password = info.pop("password", None)
    environment = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
    dbname = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    done = subprocess.run(
        [*command, f"--dbname={dbname}"], capture_output=True, text=True, check=False, env=environment
    )
    if done.returncode != 0:
        raise BackupError(f"{tool} failed: {done.stderr.strip()[-2000:]}")
