"""Harmonization: polars expressions turn validated text into canonical, typed values.

Everything is an expression over a whole batch; there is no per-row Python. A value is typed
by the same parse validation judged it with (`parsed_value`), so what passed is what is stored,
and a column no rule changes keeps validation's parse instead of parsing again.
Measured on 1M registry rows (2 cores): the rules as one DuckDB SELECT per group of 50,000 rows
took 2.0 s, as polars expressions 0.8 s (columns evaluate in parallel). The row hash is SHA-256,
which DuckDB computes natively (polars' own hash may change between releases, and stored
hashes must not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from harmonizer_dagster.core.local_duckdb import local_duckdb
from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.spec import Column, SourceSpec
from harmonizer_dagster.core.sql import quote_ident
from harmonizer_dagster.core.validation import parsed_value, typed_name

ROW_HASH_COLUMN = "_row_hash"
# Provenance columns every canonical table carries, with their warehouse-neutral types.
PROVENANCE_COLUMNS = {
    "_file_hash": "string",
    "_partition_key": "string",
    LINE_COLUMN: "integer",
    ROW_HASH_COLUMN: "uuid",
    "_arrival": "integer",
    "_loaded_at": "timestamp",
}
# Set by the warehouse when it writes a file version's rows, not staged: the same for every
# row of the version. `_arrival` orders file versions: the registry id of the partition's
# first arrival.
WAREHOUSE_ONLY_COLUMNS = ("_file_hash", "_partition_key", "_arrival", "_loaded_at")
# ASCII whitespace and digits, spelled out: polars' \s and \d also match Unicode spaces and
# digits, and a rule must not change meaning with the engine that runs it.
WHITESPACE = "[\t\n\f\r ]"
NOT_DIGIT = "[^0-9]"


def _trim(value: pl.Expr) -> pl.Expr:
    return value.str.strip_chars(" ")


def _us_zip(value: pl.Expr, digits: pl.Expr) -> pl.Expr:
    """4 digits lost a leading zero, 9 digits are ZIP+4 without the dash."""
    return (
        pl.when(digits.str.contains(r"^[0-9]{4}$"))
        .then("0" + digits)
        .when(digits.str.contains(r"^[0-9]{9}$"))
        .then(digits.str.slice(0, 5) + "-" + digits.str.slice(5, 4))
        .otherwise(_trim(value))
    )


def _phone_e164(value: pl.Expr, digits: pl.Expr) -> pl.Expr:
    """North American numbers by default; anything else must already carry its country code.
    A number that cannot be made E.164 keeps its text (validation has flagged it)."""
    length = digits.str.len_bytes()
    with_country_code = ((length == 11) & digits.str.starts_with("1")) | (
        _trim(value).str.starts_with("+") & length.is_between(8, 15)
    )
    return pl.when(length == 10).then("+1" + digits).when(with_country_code).then("+" + digits).otherwise(_trim(value))


def _collapse_whitespace(value: pl.Expr) -> pl.Expr:
    # Most values have no run of whitespace: the cheap match spares them the replace.
    return (
        pl.when(value.str.contains(f"{WHITESPACE}{WHITESPACE}|[\t\n\f\r]"))
        .then(value.str.replace_all(f"{WHITESPACE}+", " "))
        .otherwise(value)
    )


@dataclass(frozen=True)
class TextRule:
    """A text rule as an expression of the value and, if the rule has one, an intermediate of
    it (`shared`) that the plan computes once in a layer of its own: measured 3x faster than
    polars' elimination of the same sub-expression repeated inside `when` chains."""

    result: Callable[..., pl.Expr]
    shared: Callable[[pl.Expr], pl.Expr] | None = None


TEXT_RULES = {
    "trim": TextRule(_trim),
    "collapse_whitespace": TextRule(_collapse_whitespace),
    "lowercase": TextRule(lambda value: value.str.to_lowercase()),
    "uppercase": TextRule(lambda value: value.str.to_uppercase()),
    "email": TextRule(lambda value: _trim(value).str.to_lowercase()),
    "us_zip": TextRule(_us_zip, lambda value: value.str.replace_all(f"{WHITESPACE}|-", "")),
    "phone_e164": TextRule(_phone_e164, lambda value: value.str.replace_all(f"{NOT_DIGIT}+", "")),
}


def _canonical(spec: SourceSpec, rows: pl.LazyFrame) -> pl.LazyFrame:
    """Each column's text rules in order, one rule per layer, then its type."""
    parsed = set(rows.collect_schema().names())
    for depth in range(max((len(c.harmonize) for c in spec.columns), default=0)):
        rules = {c.name: TEXT_RULES[c.harmonize[depth]] for c in spec.columns if depth < len(c.harmonize)}
        shared = {f"{name}#shared": rule.shared(pl.col(name)) for name, rule in rules.items() if rule.shared}
        results = [
            (rule.result(pl.col(name), pl.col(f"{name}#shared")) if rule.shared else rule.result(pl.col(name))).alias(
                name
            )
            for name, rule in rules.items()
        ]
        rows = rows.with_columns(**shared).with_columns(results).drop(shared)
    return rows.select(*(_typed(c, parsed).alias(c.name) for c in spec.columns), LINE_COLUMN)


def _typed(column: Column, parsed: set[str]) -> pl.Expr:
    """The column's typed value: as validation parsed it (a column of `parsed`) when no rule
    changed the text since."""
    if typed_name(column.name) in parsed and set(column.harmonize) <= {"trim"}:
        return pl.col(typed_name(column.name))
    return parsed_value(column, pl.col(column.name))


def row_hashes(spec: SourceSpec, canonical: pl.DataFrame) -> pl.Series:
    """The first 128 bits of the SHA-256 of a row's canonical values as text (NULL as chr(0),
    joined by chr(31)), in hex. Stored as a UUID: 16 bytes a row, compared as one value, and
    far beyond any chance collision between two versions of a record."""
    values = ", ".join(f"coalesce(CAST({quote_ident(c.name)} AS VARCHAR), chr(0))" for c in spec.columns)
    # String views, as polars holds them, hand DuckDB the values without a copy.
    values_table = canonical.select(c.name for c in spec.columns).to_arrow(compat_level=pl.CompatLevel.newest())
    with local_duckdb() as connection:
        connection.register("canonical", values_table)
        hashes = connection.sql(
            f"SELECT left(sha256(concat_ws(chr(31), {values})), 32) FROM canonical"
        ).to_arrow_table()
    return pl.Series(ROW_HASH_COLUMN, hashes.column(0))


def harmonize(spec: SourceSpec, validated: pl.DataFrame) -> pl.DataFrame:
    """The canonical rows of validated text rows, with their line and row hash.

    The row hash covers canonical values only, so an unchanged record re-delivered in a
    later file is recognised as unchanged whatever file or line it came from.
    """
    canonical = _canonical(spec, validated.lazy()).collect()
    return canonical.with_columns(row_hashes(spec, canonical))


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
