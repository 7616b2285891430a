"""Harmonization: one DuckDB SELECT per source turns validated text into canonical, typed values.

Everything is a SQL expression over a whole batch; there is no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class _TextRule:
    """A text rule as SQL of the value `{v}`. `shared` values (SQL of `{v}`) are computed once per
    value in a layer before `result`, which names them: a regular expression runs once, not
    once per use."""

    result: str
    shared: dict[str, str] = field(default_factory=dict)


_TEXT_RULES = {
    "trim": _TextRule("trim({v})"),
    # Most values have no run of whitespace: the cheap match spares them the replace.
    "collapse_whitespace": _TextRule(
        r"CASE WHEN regexp_matches({v}, '\s\s|[\t\n\f\r]') THEN regexp_replace({v}, '\s+', ' ', 'g') ELSE {v} END"
    ),
    "lowercase": _TextRule("lower({v})"),
    "uppercase": _TextRule("upper({v})"),
    "email": _TextRule("lower(trim({v}))"),
    # Digits only; 4 digits lost a leading zero, 9 digits are ZIP+4 without the dash.
    "us_zip": _TextRule(
        "CASE WHEN regexp_full_match({zip}, '\\d{{4}}') THEN '0' || {zip} "
        "WHEN regexp_full_match({zip}, '\\d{{9}}') THEN substr({zip}, 1, 5) || '-' || substr({zip}, 6, 4) "
        "ELSE trim({v}) END",
        {"zip": "regexp_replace({v}, '[\\s-]', '', 'g')"},
    ),
    # North American numbers by default; anything else must already carry its country code.
    # A number that cannot be made E.164 keeps its text (validation has flagged it).
    "phone_e164": _TextRule(
        "CASE WHEN length({digits}) = 10 THEN '+1' || {digits} "
        "WHEN length({digits}) = 11 AND {digits} LIKE '1%' THEN '+' || {digits} "
        "WHEN trim({v}) LIKE '+%' AND length({digits}) BETWEEN 8 AND 15 THEN '+' || {digits} "
        "ELSE trim({v}) END",
        {"digits": "regexp_replace({v}, '\\D', '', 'g')"},
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


def _text_rules_sql(spec: SourceSpec, relation: str) -> str:
    """SELECT applying each column's text rules in order, one rule per layer: a layer computes
    the values its rules share, the next one replaces the columns with the rules' results."""
    sql = f"SELECT * FROM {relation}"
    for depth in range(max((len(c.harmonize) for c in spec.columns), default=0)):
        rules = {c.name: _TEXT_RULES[c.harmonize[depth]] for c in spec.columns if depth < len(c.harmonize)}
        shared = {
            f"{name}#{key}": expression.format(v=quote_ident(name))
            for name, rule in rules.items()
            for key, expression in rule.shared.items()
        }
        if shared:
            added = ", ".join(f"{expression} AS {quote_ident(alias)}" for alias, expression in shared.items())
            sql = f"SELECT *, {added} FROM ({sql})"
        results = ", ".join(
            rule.result.format(v=quote_ident(name), **{key: quote_ident(f"{name}#{key}") for key in rule.shared})
            + f" AS {quote_ident(name)}"
            for name, rule in rules.items()
        )
        dropped = f"EXCLUDE ({', '.join(quote_ident(alias) for alias in shared)}) " if shared else ""
        sql = f"SELECT * {dropped}REPLACE ({results}) FROM ({sql})"
    return sql


def harmonize_sql(spec: SourceSpec, relation: str, file_hash: str, partition_key: str) -> str:
    """SELECT producing the canonical schema plus provenance from validated text rows.

    The row hash covers canonical values only, so an unchanged record re-delivered in a
    later file is recognised as unchanged whatever file or line it came from.
    """
    canonical = [f"{_typed(c, quote_ident(c.name))} AS {quote_ident(c.name)}" for c in spec.columns]
    hashed = ", ".join(f"coalesce(CAST({quote_ident(c.name)} AS VARCHAR), chr(0))" for c in spec.columns)
    return (
        f"WITH text AS ({_text_rules_sql(spec, relation)}), "
        f"canonical AS (SELECT {', '.join(canonical)}, {quote_ident(LINE_COLUMN)} FROM text) "
        f"SELECT *, {quote_literal(file_hash)} AS _file_hash, {quote_literal(partition_key)} AS _partition_key, "
        f"sha256(concat_ws(chr(31), {hashed})) AS {ROW_HASH_COLUMN} FROM canonical"
    )


def duplicate_key_sql(spec: SourceSpec, relation: str) -> str:
    """Rows superseded by a later row with the same natural key: the last occurrence wins.

    Keys are grouped once and only the repeated ones are joined back: cheaper than windows
    over every row. NULL keys group together, as they would in a window's partition."""
    keys = [quote_ident(k) for k in spec.natural_key]
    line = quote_ident(LINE_COLUMN)
    record_id = " || '|' || ".join(f"coalesce(CAST(r.{k} AS VARCHAR), '')" for k in keys)
    matches = " AND ".join(f"r.{k} IS NOT DISTINCT FROM kept.{k}" for k in keys)
    return (
        f"WITH kept AS (SELECT {', '.join(keys)}, max({line}) AS kept_line FROM {relation} "
        f"GROUP BY {', '.join(keys)} HAVING count(*) > 1) "
        f"SELECT r.{line} AS source_line_number, {record_id} AS source_record_id, kept.kept_line "
        f"FROM {relation} AS r JOIN kept ON {matches} WHERE r.{line} < kept.kept_line"
    )
