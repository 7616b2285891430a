"""The dead-letter queue: failed records retried after a rule or a spec fix.

Records go through the same rules, validation, harmonization and upsert as a file; the
ones that now pass are written and marked reprocessed in one transaction, so running the
reprocess twice changes nothing the second time.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from harmonizer_dagster.core.harmonization import duplicate_key_sql, harmonize
from harmonizer_dagster.core.local_duckdb import local_duckdb
from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.rules import apply_rules
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.sql import quote_literal
from harmonizer_dagster.core.validation import SpecValidator
from harmonizer_dagster.core.warehouse import Warehouse


@dataclass(frozen=True)
class ReprocessResult:
    attempted: int
    reprocessed: int
    still_failing: int
    inserted: int
    updated: int


def reprocess(spec: SourceSpec, store: Warehouse, scratch_root: Path) -> ReprocessResult:
    """Retries every pending failed record of the source that has a record to retry
    (malformed lines have none: they need a corrected file)."""
    store.migrate([spec])
    pending = store.query(
        "SELECT CAST(record_id AS VARCHAR), partition_key, file_hash, source_line_number, record_data "
        "FROM {schema}.failed_records f WHERE source_type = %s AND NOT reprocessed "
        "AND error_type = 'validation_error' "
        # Only published versions' records: a held, discarded or waiting version is not in the
        # table consumers read, so neither are its fixed records.
        "AND EXISTS (SELECT 1 FROM {schema}.sources v WHERE v.source_id = f.source_id AND v.status = 'completed') "
        "ORDER BY partition_key, source_line_number",
        (spec.name,),
    )
    if not pending:
        return ReprocessResult(0, 0, 0, 0, 0)
    frame = pl.DataFrame(
        pending,
        schema={
            "record_id": pl.Utf8,
            "partition_key": pl.Utf8,
            "file_hash": pl.Utf8,
            LINE_COLUMN: pl.Int64,
            "record_data": pl.Utf8,
        },
        orient="row",
    )
    fields = pl.Struct([pl.Field(c.source, pl.Utf8) for c in spec.columns])
    records = frame.with_columns(pl.col("record_data").str.json_decode(fields).alias("record")).unnest("record")
    raw = records.rename({c.source: c.name for c in spec.columns}).select(
        *[c.name for c in spec.columns], LINE_COLUMN, "record_id", "partition_key", "file_hash"
    )
    totals = {"reprocessed": 0, "inserted": 0, "updated": 0}
    scratch = Path(tempfile.mkdtemp(prefix=f"{spec.name}-dlq-", dir=scratch_root if scratch_root.exists() else None))
    try:
        validator = SpecValidator(spec)
        rules = store.active_rules(spec.name)
        # Records of one file version share provenance, so each version is one upsert.
        for (partition_key, file_hash), group in raw.group_by(["partition_key", "file_hash"], maintain_order=True):
            fixed, _ = apply_rules(group.drop("record_id", "partition_key", "file_hash"), rules)
            checked = validator.validate(fixed.to_arrow())
            passing_lines = checked.accepted[LINE_COLUMN]
            if passing_lines.is_empty():
                continue
            passing = group.filter(pl.col(LINE_COLUMN).is_in(passing_lines.implode())).select("record_id", LINE_COLUMN)
            harmonized_path = scratch / f"{file_hash}-harmonized.parquet"
            superseded_path = scratch / f"{file_hash}-superseded.parquet"
            harmonize(spec, checked.accepted).write_parquet(harmonized_path)
            with local_duckdb() as connection:
                duplicates = duplicate_key_sql(spec, f"read_parquet({quote_literal(str(harmonized_path))})")
                connection.sql(
                    f"COPY (SELECT source_line_number FROM ({duplicates})) TO "
                    f"{quote_literal(str(superseded_path))} (FORMAT parquet)"
                )
            counts, written = store.publish_reprocessed(
                spec,
                (str(file_hash), str(partition_key)),
                [harmonized_path],
                [superseded_path],
                [tuple(r) for r in passing.rows()],
            )
            totals["reprocessed"] += written
            totals["inserted"] += counts.inserted
            totals["updated"] += counts.updated
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ReprocessResult(
        attempted=len(pending),
        reprocessed=totals["reprocessed"],
        still_failing=len(pending) - totals["reprocessed"],
        inserted=totals["inserted"],
        updated=totals["updated"],
    )


# A dead-letter listing's columns, in the order the page shows them.
FAILED_COLUMNS = (
    "record_id",
    "source_type",
    "partition_key",
    "source_line_number",
    "source_record_id",
    "error_type",
    "error_message",
    "record_data",
    "reprocessed",
)


def list_failed(
    store: Warehouse, source: str | None = None, reprocessed: bool | None = False, page: int = 1, limit: int = 50
) -> tuple[list[dict], int]:
    """One page of failed records (pending ones by default) and how many match: the database
    sorts and cuts, as for issues."""
    clauses, params = ["TRUE"], []
    if source is not None:
        clauses.append("source_type = %s")
        params.append(source)
    if reprocessed is not None:
        clauses.append("reprocessed = %s")
        params.append(reprocessed)
    order = "source_type, partition_key, source_line_number, record_id"
    return store.page("failed_records", FAILED_COLUMNS, " AND ".join(clauses), params, order, page, limit)


def record_sink_rejects(
    store: Warehouse, spec: SourceSpec, source_id: int, run_id: str, sink: str, rejected: list[tuple[int, str, str]]
) -> None:
    """Keeps the messages a sink refused (line, message, reason) as dead letters of their version,
    in place of any the same lines got from an earlier run of the sink: a resumed run sends a
    block again. Reprocessing leaves them alone (they passed every check); a steward sees them."""
    error_type = "sink_rejected"
    with store.transaction():
        partition_key, file_hash = store.query(
            "SELECT partition_key, file_hash FROM {schema}.sources WHERE source_id = %s", (source_id,)
        )[0]
        lines = ", ".join(str(int(line)) for line, _, _ in rejected)
        store.query(
            "DELETE FROM {schema}.failed_records WHERE source_id = %s AND error_type = %s "
            f"AND left(error_message, %s) = %s AND source_line_number IN ({lines})",
            (source_id, error_type, len(sink) + 1, f"{sink}:"),
        )
        for line, message, why in rejected:
            store.query(
                "INSERT INTO {schema}.failed_records (source_id, source_type, partition_key, file_hash, run_id, "
                "source_line_number, record_data, error_type, error_message) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (source_id, spec.name, partition_key, file_hash, run_id, line, message, error_type, f"{sink}: {why}"),
            )
        store.recount([source_id])
