"""Harmonization: one DuckDB SELECT per source turns validated text into canonical, typed values.

Everything is a SQL expression over a whole batch; there is no per-row Python.
"""

from __future__ import annotations

from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.spec import Column, SourceSpec
from harmonizer_dagster.core.sql import quote_ident, quote_literal

ROW_HASH_COLUMN = "_row_hash"
# Provenance columns every canonical table carries, with their warehouse-neutral types.
PROVENANCE_COLUMNS = {
    "_file_hash": "string",
    "_partition_key": "string",
    LINE_COLUMN: "integer",
    ROW_HASH_COLUMN: "string",
    "_arrival": "integer",
    "_loaded_at": "timestamp",
}
# Set by the warehouse when it writes a row, not staged with the harmonized data. `_arrival`
# orders file versions: the registry id of the partition's first arrival.
WAREHOUSE_ONLY_COLUMNS = ("_arrival", "_loaded_at")

_TEXT_RULES = {
    "trim": "trim({v})",
    "collapse_whitespace": r"regexp_replace({v}, '\s+', ' ', 'g')",
    "lowercase": "lower({v})",
    "uppercase": "upper({v})",
    "email": "lower(trim({v}))",
    # Digits only; 4 digits lost a leading zero, 9 digits are ZIP+4 without the dash.
    "us_zip": (
        "CASE WHEN regexp_full_match(regexp_replace({v}, '[\\s-]', '', 'g'), '\\d{{4}}') "
        "THEN '0' || regexp_replace({v}, '[\\s-]', '', 'g') "
        "WHEN regexp_full_match(regexp_replace({v}, '[\\s-]', '', 'g'), '\\d{{9}}') "
        "THEN substr(regexp_replace({v}, '[\\s-]', '', 'g'), 1, 5) || '-' "
        "|| substr(regexp_replace({v}, '[\\s-]', '', 'g'), 6, 4) "
        "ELSE trim({v}) END"
    ),
    # North American numbers by default; anything else must already carry its country code.
    # A number that cannot be made E.164 keeps its text (validation has flagged it).
    "phone_e164": (
        "CASE WHEN length(regexp_replace({v}, '\\D', '', 'g')) = 10 "
        "THEN '+1' || regexp_replace({v}, '\\D', '', 'g') "
        "WHEN length(regexp_replace({v}, '\\D', '', 'g')) = 11 AND regexp_replace({v}, '\\D', '', 'g') LIKE '1%' "
        "THEN '+' || regexp_replace({v}, '\\D', '', 'g') "
        "WHEN trim({v}) LIKE '+%' AND length(regexp_replace({v}, '\\D', '', 'g')) BETWEEN 8 AND 15 "
        "THEN '+' || regexp_replace({v}, '\\D', '', 'g') "
        "ELSE trim({v}) END"
    ),
}


def _typed(column: Column, value: str) -> str:
    if column.type == "integer":
        return f"TRY_CAST({value} AS BIGINT)"
    if column.type == "decimal":
        return f"TRY_CAST({value} AS DECIMAL({column.precision}, {column.scale}))"
    if column.type == "boolean":
        return (
            f"CASE WHEN lower({value}) IN ('true','t','yes','y','1') THEN TRUE "
            f"WHEN lower({value}) IN ('false','f','no','n','0') THEN FALSE END"
        )
    if column.type in ("date", "timestamp"):
        parses = ", ".join(f"try_strptime({value}, {quote_literal(fmt)})" for fmt in column.parse_formats)
        target = "DATE" if column.type == "date" else "TIMESTAMP"
        return f"CAST(coalesce({parses}) AS {target})"
    return value


def column_expression(column: Column) -> str:
    value = quote_ident(column.name)
    for rule in column.harmonize:
        value = _TEXT_RULES[rule].format(v=value)
    return _typed(column, value)


def harmonize_sql(spec: SourceSpec, relation: str, file_hash: str, partition_key: str) -> str:
    """SELECT producing the canonical schema plus provenance from validated text rows.

    The row hash covers canonical values only, so an unchanged record re-delivered in a
    later file is recognised as unchanged whatever file or line it came from.
    """
    canonical = [f"{column_expression(c)} AS {quote_ident(c.name)}" for c in spec.columns]
    hashed = ", ".join(f"coalesce(CAST({quote_ident(c.name)} AS VARCHAR), chr(0))" for c in spec.columns)
    return (
        f"WITH canonical AS (SELECT {', '.join(canonical)}, {quote_ident(LINE_COLUMN)} FROM {relation}) "
        f"SELECT *, {quote_literal(file_hash)} AS _file_hash, {quote_literal(partition_key)} AS _partition_key, "
        f"sha256(concat_ws(chr(31), {hashed})) AS {ROW_HASH_COLUMN} FROM canonical"
    )


def duplicate_key_sql(spec: SourceSpec, relation: str) -> str:
    """Rows superseded by a later row with the same natural key: the last occurrence wins."""
    keys = ", ".join(quote_ident(k) for k in spec.natural_key)
    record_id = " || '|' || ".join(f"coalesce(CAST({quote_ident(k)} AS VARCHAR), '')" for k in spec.natural_key)
    return (
        f"SELECT {quote_ident(LINE_COLUMN)} AS source_line_number, {record_id} AS source_record_id, "
        f"max({quote_ident(LINE_COLUMN)}) OVER (PARTITION BY {keys}) AS kept_line "
        f"FROM {relation} QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {quote_ident(LINE_COLUMN)} DESC) > 1"
    )
