"""Streams a source file as Arrow batches of raw text values, whatever its format.

DuckDB does the parsing for every format (CSV, JSON array, NDJSON, gzip), so memory stays
bounded by the batch size and malformed CSV lines are captured instead of aborting the file.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.sql import quote_ident, quote_literal

LINE_COLUMN = "_source_line"


class SourceFormatError(ValueError):
    """The file cannot be read as its spec declares (missing columns, broken JSON...)."""


@dataclass
class MalformedRecord:
    line: int
    raw_text: str
    error: str


@dataclass
class ReadResult:
    """Filled while reading; malformed records are known once the scan is finished."""

    malformed: list[MalformedRecord] = field(default_factory=list)
    extra_fields: list[str] = field(default_factory=list)


def _compression(spec: SourceSpec) -> str:
    return {"auto": "auto", "none": "none", "gzip": "gzip"}[spec.compression]


def _csv_header(spec: SourceSpec, path: Path) -> list[str]:
    gzipped = spec.compression == "gzip" or (spec.compression == "auto" and path.suffix == ".gz")
    opener = gzip.open if gzipped else open
    encoding = "utf-8-sig" if spec.encoding == "utf-8" else spec.encoding  # Excel exports start with a BOM
    with opener(path, "rt", encoding=encoding, newline="") as handle:
        return next(csv.reader(handle, delimiter=spec.delimiter), [])


def _check_json_keys(spec: SourceSpec, path: Path, json_format: str, result: ReadResult) -> None:
    """A required field no record carries is a renamed or dropped column: reading it as
    nulls would blank stored values, so the file is refused; unknown keys are reported."""
    with duckdb.connect() as con:
        present = {
            row[0]
            for row in con.sql(
                f"SELECT DISTINCT unnest(json_keys(json)) FROM read_json_objects({quote_literal(str(path))}, "
                f"format={quote_literal(json_format)}, compression={quote_literal(_compression(spec))})"
            ).fetchall()
        }
    missing = [c.source for c in spec.columns if c.required and c.source not in present]
    if missing:
        raise SourceFormatError(f"{path.name}: no record has the required field(s) {missing}")
    result.extra_fields = sorted(present - {c.source for c in spec.columns})


def _query(spec: SourceSpec, path: Path, result: ReadResult) -> str:
    wanted = [c.source for c in spec.columns]
    if spec.format == "csv":
        header = _csv_header(spec, path)
        missing = [name for name in wanted if name not in header]
        if missing:
            raise SourceFormatError(f"{path.name}: missing columns {missing}; the file has {header}")
        result.extra_fields = [name for name in header if name not in wanted]
        columns = ", ".join(f"{quote_literal(name)}: 'VARCHAR'" for name in header)
        scan = (
            f"read_csv({quote_literal(str(path))}, header=true, auto_detect=false, columns={{{columns}}}, "
            f"delim={quote_literal(spec.delimiter)}, quote='\"', escape='\"', "
            f"encoding={quote_literal(spec.encoding)}, compression={quote_literal(_compression(spec))}, "
            "store_rejects=true)"
        )
    else:
        json_format = "array" if spec.format == "json" else "newline_delimited"
        _check_json_keys(spec, path, json_format, result)
        columns = ", ".join(f"{quote_literal(name)}: 'VARCHAR'" for name in wanted)
        scan = (
            f"read_json({quote_literal(str(path))}, format={quote_literal(json_format)}, "
            f"columns={{{columns}}}, compression={quote_literal(_compression(spec))})"
        )
    selected = ", ".join(f"{quote_ident(c.source)} AS {quote_ident(c.name)}" for c in spec.columns)
    return f"SELECT {selected} FROM {scan}"


def read_batches(
    spec: SourceSpec, path: Path, batch_rows: int, result: ReadResult, skip_batches: int = 0
) -> Iterator[pa.RecordBatch]:
    """Yields batches of exactly `batch_rows` rows (the last may be shorter), each with the
    1-based record number in `_source_line`. The first `skip_batches` batches are parsed
    but not yielded, which is how a resumed step skips work it already checkpointed."""
    con = duckdb.connect(config={"threads": 2, "memory_limit": "512MB"})
    try:
        try:
            reader = con.sql(_query(spec, path, result)).to_arrow_reader(batch_rows)
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            emitted = 0
            for batch in reader:
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= batch_rows:
                    table = pa.Table.from_batches(pending)
                    chunk, rest = table.slice(0, batch_rows), table.slice(batch_rows)
                    if emitted >= skip_batches:
                        yield _numbered(chunk, emitted * batch_rows)
                    emitted += 1
                    pending, pending_rows = rest.to_batches(), rest.num_rows
            if pending_rows and emitted >= skip_batches:
                yield _numbered(pa.Table.from_batches(pending), emitted * batch_rows)
        except duckdb.Error as exc:
            raise SourceFormatError(f"{path.name}: cannot be read as {spec.format}: {exc}") from exc
        if spec.format == "csv":
            # DuckDB reports one error per missing or extra column: one record per line here.
            rows = con.sql(
                "SELECT line, any_value(csv_line), string_agg(error_message, '; ') FROM reject_errors "
                "GROUP BY line ORDER BY line"
            ).fetchall()
            result.malformed = [MalformedRecord(int(line), text or "", message) for line, text, message in rows]
    finally:
        con.close()


def _numbered(table: pa.Table, first_index: int) -> pa.RecordBatch:
    lines = pa.array(range(first_index + 1, first_index + table.num_rows + 1), type=pa.int64())
    return table.append_column(LINE_COLUMN, lines).combine_chunks().to_batches()[0]
