"""A file version as its sender follows it: where it is (queued, running, loaded, held,
published, failed), what it came to, what its checks said, and its rows, issues and failed
records, read a page or a batch at a time.

The state is the registry's, told apart by what the run loading it says: a version the
registry does not know yet is queued (or failed, when its run ended without registering it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from harmonizer_dagster.core.dead_letters import FAILED_COLUMNS as DEAD_LETTER_COLUMNS
from harmonizer_dagster.core.quality import checks_for
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.sql import quote_ident
from harmonizer_dagster.core.triage import ISSUE_COLUMNS
from harmonizer_dagster.core.warehouse import Warehouse

VERSION_COLUMNS = (
    "source_id",
    "source_type",
    "partition_key",
    "source_version",
    "file_name",
    "file_hash",
    "file_size_bytes",
    "status",
    "records_in_file",
    "records_processed",
    "records_expected",
    "records_imported",
    "records_failed",
    "records_skipped",
    "records_inserted",
    "records_updated",
    "records_unchanged",
    "held_because",
    "error_message",
    "run_id",
    "import_started_at",
    "import_completed_at",
    "published_at",
)
# What each registry status means to a sender.
STATES = {
    "processing": "running",
    "staged": "loaded",
    "held": "held",
    "completed": "published",
    "skipped": "published",
    "failed": "failed",
    "discarded": "discarded",
    "superseded": "superseded",
}
# Dagster run statuses of a run that ended without loading the file, and of one still to start.
ENDED_RUN_STATES = {"FAILURE": "failed", "CANCELED": "canceled"}
WAITING_RUN_STATES = ("QUEUED", "NOT_STARTED", "STARTING", "MANAGED")
# A version's failed records as the dead-letter listing shows them, less what the version says.
FAILED_COLUMNS = tuple(c for c in DEAD_LETTER_COLUMNS if c not in ("source_type", "partition_key"))


def _versions(store: Warehouse, where: str, params: list[Any], suffix: str = "") -> list[dict[str, Any]]:
    rows = store.query(f"SELECT {', '.join(VERSION_COLUMNS)} FROM {{schema}}.sources WHERE {where}{suffix}", params)
    return [dict(zip(VERSION_COLUMNS, row, strict=True)) for row in rows]


def find_version(store: Warehouse, source_id: int) -> dict[str, Any] | None:
    found = _versions(store, "source_id = %s", [source_id])
    return found[0] if found else None


def version_of_file(store: Warehouse, source: str, partition_key: str, file_hash: str) -> dict[str, Any] | None:
    """The registry's entry for these bytes under this partition, once a run registered them."""
    found = _versions(
        store, "source_type = %s AND partition_key = %s AND file_hash = %s", [source, partition_key, file_hash]
    )
    return found[0] if found else None


def list_versions(
    store: Warehouse, source: str, status: str | None, page: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """A source's versions, newest first, a page at a time; `status` is a registry status."""
    if page < 1 or limit < 1:
        raise ValueError("page and limit must be at least 1")
    where, params = "source_type = %s", [source]
    if status:
        where, params = f"{where} AND status = %s", [*params, status]
    total = int(store.query(f"SELECT count(*) FROM {{schema}}.sources WHERE {where}", params)[0][0])
    rows = _versions(store, where, [*params, limit, (page - 1) * limit], " ORDER BY source_id DESC LIMIT %s OFFSET %s")
    return rows, total


def state(version: dict[str, Any] | None, run_status: str | None) -> tuple[str, str | None]:
    """(state, reason): what the registry says, told apart by the status of the run loading
    the file (Dagster's name for it, None without a run) where the registry cannot say: before
    the run registers the file, or when the run ended without recording its outcome."""
    if version is None or (version["status"] == "processing" and run_status in ENDED_RUN_STATES):
        if run_status in ENDED_RUN_STATES:
            return ENDED_RUN_STATES[run_status], f"its Dagster run ended {run_status.lower()}"
        if run_status == "SUCCESS":
            # The bytes were replaced under the same name before the run read them.
            return "superseded", "its run loaded the file as it was then, which is no longer these bytes"
        if run_status == "STARTED":
            return "running", None
        if run_status == "CANCELING":
            return "running", "its run is being canceled"
        return "queued", None
    current = STATES.get(version["status"], version["status"])
    if current == "failed":
        return current, version["error_message"]
    if current == "held":
        return current, f"blocking check(s) failed: {version['held_because']}"
    return current, None


def latest_checks(store: Warehouse, spec: SourceSpec | None, source_id: int) -> list[dict[str, Any]]:
    """Each check's latest evaluation of the version, blocking ones first."""
    rows = store.query(
        "SELECT check_name, severity, passed, message, observed_value, threshold, evaluated_at FROM ("
        "SELECT *, row_number() OVER (PARTITION BY check_name ORDER BY evaluated_at DESC) AS recency "
        "FROM {schema}.data_quality_checks WHERE source_id = %s) AS c WHERE recency = 1 "
        "ORDER BY severity <> 'error', check_name",
        (source_id,),
    )
    names = ("check_name", "severity", "passed", "message", "observed_value", "threshold", "evaluated_at")
    blocking = {check.name for check in checks_for(spec) if check.severity == "error"} if spec else set()
    return [dict(zip(names, row, strict=True)) | {"blocking": row[0] in blocking} for row in rows]


def version_issues(store: Warehouse, source_id: int, page: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """A version's issues in file order, a page at a time."""
    order = "source_line_number, field_name, rule, issue_id"
    return store.page("data_quality_issues", ISSUE_COLUMNS, "source_id = %s", [source_id], order, page, limit)


def version_failed_records(store: Warehouse, source_id: int, page: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """A version's rejected records in file order, a page at a time."""
    order = "source_line_number, record_id"
    return store.page("failed_records", FAILED_COLUMNS, "source_id = %s", [source_id], order, page, limit)


def _batches(
    store: Warehouse, select: str, relation: str, params: list[Any], order: str, batch_rows: int
) -> Iterator[list[tuple]]:
    """The relation's rows a batch at a time, each batch a query of its own: a download holds
    one batch in memory and no transaction open between two (a load may need the warehouse)."""
    offset = 0
    while True:
        rows = store.query(
            f"SELECT {select} FROM {relation} ORDER BY {order} LIMIT %s OFFSET %s", [*params, batch_rows, offset]
        )
        if rows:
            yield rows
        if len(rows) < batch_rows:
            return
        offset += batch_rows


def version_rows(
    store: Warehouse, spec: SourceSpec, version: dict[str, Any], batch_rows: int = 10_000
) -> tuple[list[str], Iterator[list[tuple]]]:
    """The canonical columns and the batches of rows the version holds: the rows it wrote to the
    table consumers read once published (less those a later file wrote over), else its staged rows."""
    names = [column.name for column in spec.columns]
    select = ", ".join(quote_ident(name) for name in names)
    order = ", ".join(quote_ident(key) for key in spec.natural_key)
    if version["status"] in ("staged", "held"):
        relation, params = f"{store.stage_table(spec.name)} WHERE _source_id = %s", [version["source_id"]]
    else:
        relation = f"{store.table(spec.name)} WHERE _file_hash = %s AND _partition_key = %s"
        params = [version["file_hash"], version["partition_key"]]
    return names, _batches(store, select, relation, params, order, batch_rows)


def version_failed_batches(
    store: Warehouse, source_id: int, batch_rows: int = 10_000
) -> tuple[list[str], Iterator[list[tuple]]]:
    """Every rejected record of the version, in batches, for a download."""
    select = ", ".join(f"CAST({name} AS VARCHAR)" if name == "record_id" else name for name in FAILED_COLUMNS)
    relation = "{schema}.failed_records WHERE source_id = %s"
    return list(FAILED_COLUMNS), _batches(
        store, select, relation, [source_id], "source_line_number, record_id", batch_rows
    )
