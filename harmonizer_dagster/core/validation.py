"""Validation: a pandera schema generated from the spec, evaluated on whole batches.

Values are judged after trimming, and empty strings count as missing: both pandas and
polars readers disagree on what an empty CSV field is, so the pipeline decides once here.
Every failed rule becomes a row-level issue; rows failing an error-severity rule are
rejected with their raw record, warnings pass through.

The pandera schema is the declaration, but `DataFrameSchema.validate` collects once per
check and once per non-nullable column. Measured on 50,000 registry rows (2 cores):
`validate(lazy=True)` 155 ms; each check's own function (a `select` on the same LazyFrame)
concatenated horizontally and collected once 133 ms; one `select` of every check's
expression, collected once, 100 ms (245 ms without common-subexpression elimination). The
one select is used: polars then computes shared sub-expressions once (a date is parsed once
for its type and range checks), and the issue bookkeeping after it touches only the rows
that failed something.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import partial
from importlib.abc import MetaPathFinder

import numpy as np
import polars as pl
import pyarrow as pa_arrow

from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.spec import (
    ISO_DATE_FORMAT,
    ISO_TIMESTAMP_FORMATS,
    ROUNDING_MODES,
    Check,
    Column,
    SourceSpec,
)


class _NoPandas(MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


@contextmanager
def _as_without_pandas() -> Iterator[None]:
    """Imports made in the block find no pandas, as on an install of this project, which has
    none. pandera loads its whole pandas API whenever pandas can be imported (the dev extra
    installs it for a sample data set): 0.4 s and 70 MiB a process, for nothing, as only
    polars frames are validated here. pandas stays importable after the block."""
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


with _as_without_pandas():
    import pandera.polars as pa
    from pandera.api.polars.types import PolarsData

NOT_NULLABLE = "not_nullable"
# Stripping NUL bytes alters a value, so each altered value is reported under this rule. An
# issue shows them as this symbol: PostgreSQL text cannot hold a NUL.
NUL_RULE = "nul_bytes"
NUL_SHOWN_AS = "\u2400"
# A decimal rounded to its scale, as the column's `rounding` allows, is an altered value too.
ROUNDED_RULE = "rounded"
# Warnings about values the pipeline altered on purpose: the value stored is valid.
ALTERED_RULES = (NUL_RULE, ROUNDED_RULE)
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")

ISSUE_SCHEMA = {
    "source_line_number": pl.Int64,
    "source_record_id": pl.Utf8,
    "issue_type": pl.Utf8,
    "severity": pl.Utf8,
    "field_name": pl.Utf8,
    "invalid_value": pl.Utf8,
    "expected_format": pl.Utf8,
    "rule": pl.Utf8,
}
FAILED_SCHEMA = {
    "source_line_number": pl.Int64,
    "source_record_id": pl.Utf8,
    "record_data": pl.Utf8,
    "error_type": pl.Utf8,
    "error_message": pl.Utf8,
}


@dataclass(frozen=True)
class Rule:
    """What an issue raised by one pandera check means to a data-quality triager."""

    field_name: str
    issue_type: str
    severity: str
    expected_format: str


@dataclass
class ValidatedBatch:
    """`accepted` holds the trimmed text of the rows that passed, and each typed column's parsed
    value (`typed_name`): harmonization stores it without parsing it again."""

    accepted: pl.DataFrame
    issues: pl.DataFrame
    failed: pl.DataFrame


def parsed_value(column: Column, value: pl.Expr) -> pl.Expr:
    """The typed value of a trimmed text value, null when it does not parse or would not be
    stored as the file holds it."""
    if column.type == "integer":
        return value.cast(pl.Int64, strict=False)
    if column.type == "decimal":
        return _decimal(column, value)
    if column.type == "boolean":
        lowered = value.str.to_lowercase()
        return pl.when(lowered.is_in(TRUE_WORDS)).then(True).when(lowered.is_in(FALSE_WORDS)).then(False)
    if column.type in ("date", "timestamp"):
        return _moment(column, value)
    return value


def beyond_scale(column: Column, value: pl.Expr) -> pl.Expr:
    """True where the value has more digits after the point than the column's scale, trailing
    zeros aside and an exponent counted (`1.5e-3` has four)."""
    fraction = value.str.extract(r"\.([0-9]*[1-9])", 1).str.len_chars().fill_null(0).cast(pl.Int64)
    exponent = value.str.extract(r"[eE]([+-]?[0-9]+)$", 1).cast(pl.Int64, strict=False).fill_null(0)
    return (fraction - exponent) > column.scale


def _decimal(column: Column, value: pl.Expr) -> pl.Expr:
    """The warehouse's DECIMAL(p, s): a value that would not fit fails here, not as a NULL
    later, and so does one with more digits after the point than the scale (a cast would round
    it without a word), unless the column's `rounding` says how to round it."""
    fitted = pl.Decimal(column.precision, column.scale)
    if column.rounding is None:
        return pl.when(beyond_scale(column, value).not_()).then(value.cast(fitted, strict=False))
    # Read with every digit the integer part leaves room for, then rounded by the declared rule.
    wide = pl.Decimal(38, 38 - (column.precision - column.scale))
    rounded = value.cast(wide, strict=False).round(column.scale, mode=ROUNDING_MODES[column.rounding])
    return rounded.cast(fitted, strict=False)


# A fraction of a second finer than a microsecond, which the warehouses cannot hold.
BEYOND_MICROSECONDS = r"[.,][0-9]{6}[0-9]*[1-9]"


def _moment(column: Column, value: pl.Expr) -> pl.Expr:
    """A date or timestamp as the instant the file means, within the column's `date_range`.

    A timestamp with `Z` or an offset is that instant; one without is read in the column's
    `timezone`. Timestamps are stored in UTC. ISO 8601 is read whatever the column's formats."""
    earliest, latest = (date.fromisoformat(bound) for bound in column.date_range)
    if column.type == "date":
        formats = dict.fromkeys((*column.parse_formats, ISO_DATE_FORMAT))
        parsed = pl.coalesce([value.str.strptime(pl.Date, f, strict=False, exact=True) for f in formats])
        return pl.when(parsed.is_between(pl.lit(earliest), pl.lit(latest))).then(parsed)
    iso_seconds = {f.replace("%.f", "") for f in ISO_TIMESTAMP_FORMATS}
    formats = dict.fromkeys((*(f for f in column.parse_formats if f not in iso_seconds), *ISO_TIMESTAMP_FORMATS))
    readings = []
    for fmt in formats:
        if "%z" not in fmt and "%#z" not in fmt and "%:z" not in fmt:
            zoned = value.str.strptime(pl.Datetime("us"), fmt + "%#z", strict=False, exact=True)
            readings.append(zoned.dt.convert_time_zone("UTC").dt.replace_time_zone(None))
            naive = value.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True)
            if column.timezone != "UTC":
                # A wall-clock time a zone's clock change skips or repeats is no one instant: rejected.
                local = naive.dt.replace_time_zone(column.timezone, ambiguous="null", non_existent="null")
                naive = local.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            readings.append(naive)
        else:
            zoned = value.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True)
            readings.append(zoned.dt.convert_time_zone("UTC").dt.replace_time_zone(None))
    parsed = pl.coalesce(readings)
    within = parsed.is_between(pl.lit(datetime.combine(earliest, time.min)), pl.lit(datetime.combine(latest, time.max)))
    return pl.when(within & value.str.contains(BEYOND_MICROSECONDS).not_()).then(parsed)


def _within_scale(column: Column, value: pl.Expr, typed: pl.Expr) -> pl.Expr:
    """True where a decimal needed no rounding (or is no decimal: the type check's issue)."""
    return value.is_null() | typed.is_null() | beyond_scale(column, value).not_()


def expected(column: Column) -> str:
    """What a value of a typed column must look like, as an issue tells the triager."""
    if column.type == "decimal":
        whole = column.precision - column.scale
        return f"decimal with at most {whole} digits before the point and {column.scale} after"
    if column.type not in ("date", "timestamp"):
        return column.type
    earliest, latest = column.date_range
    formats = " or ".join(column.parse_formats)
    if column.type == "date":
        return f"date as {formats}, from {earliest} to {latest}"
    return (
        f"timestamp as {formats} (or ISO 8601; with Z or an offset, else {column.timezone} time), "
        f"from {earliest} to {latest}, to the microsecond"
    )


def _literal(column: Column, bound: str) -> pl.Expr:
    """Range bounds are written in ISO form whatever formats the column's values come in."""
    if column.type == "date":
        return pl.lit(date.fromisoformat(bound[:10]))
    if column.type == "timestamp":
        return pl.lit(datetime.fromisoformat(bound))
    return pl.lit(float(bound))


def _check_expression(column: Column, check: Check, value: pl.Expr, typed: pl.Expr) -> pl.Expr:
    """True where the value passes; missing values pass (`required` handles them). `typed` is
    the value parsed as the column's type (`parsed_value`)."""
    if check.kind == "pattern":
        passed = value.str.contains(check.pattern or "")
    elif check.kind == "allowed_values":
        if check.ignore_case:
            passed = value.str.to_lowercase().is_in([v.lower() for v in check.allowed_values])
        else:
            passed = value.is_in(list(check.allowed_values))
    elif check.kind == "range":
        if column.type in ("integer", "decimal"):
            typed = typed.cast(pl.Float64)
        passed = pl.lit(True)
        if check.minimum is not None:
            passed = passed & (typed >= _literal(column, check.minimum))
        if check.maximum is not None:
            passed = passed & (typed <= _literal(column, check.maximum))
        passed = passed | typed.is_null()  # unparseable values are the type check's issue
    else:
        raise ValueError(f"check kind {check.kind} is not evaluated per batch")
    return value.is_null() | passed.fill_null(True)


Expression = Callable[[pl.Expr, pl.Expr], pl.Expr]


def _passes(data: PolarsData, expression: Expression, parse: Callable[[pl.Expr], pl.Expr]) -> pl.LazyFrame:
    """A pandera check function: true where the column's value passes."""
    value = pl.col(data.key)
    return data.lazyframe.select(expression(value, parse(value)))


def _pandera_check(column: Column, expression: Expression, name: str) -> pa.Check:
    # The expression (of the value and its typed form) is the check's statistic, so the validator
    # can evaluate every check in one select, parsing each value once.
    return pa.Check(_passes, name=name, error=name, expression=expression, parse=partial(parsed_value, column))


def typed_name(column: str) -> str:
    """Where accepted rows carry a typed column's parsed value (`parsed_value`)."""
    return f"{column}:typed"


def _any(columns: list[str]) -> pl.Expr:
    return pl.any_horizontal(columns) if columns else pl.lit(False)


def columns_with_nul(table: pa_arrow.Table) -> list[str]:
    """The text columns holding a NUL byte anywhere, found by scanning each array's bytes at
    once: 20x cheaper than asking every value, and almost every batch holds none."""
    found = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not pa_arrow.types.is_string(column.type) and not pa_arrow.types.is_large_string(column.type):
            continue
        offset_type = np.dtype(np.int32 if pa_arrow.types.is_string(column.type) else np.int64)
        for chunk in column.chunks:
            _, offsets, data = chunk.buffers()
            if data is None or not len(chunk):
                continue
            bounds = np.frombuffer(offsets, offset_type, len(chunk) + 1, chunk.offset * offset_type.itemsize)
            start, end = int(bounds[0]), int(bounds[-1])
            if end > start and not np.frombuffer(data, np.uint8, end - start, start).all():
                found.append(name)
                break
    return found


class SpecValidator:
    """Compiles a spec into a pandera schema once; validates any number of batches."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.columns = [c.name for c in spec.columns]
        self.rules: dict[tuple[str, str], Rule] = {}
        columns = {}
        for column in spec.columns:
            checks = []
            self.rules[(column.name, NOT_NULLABLE)] = Rule(
                column.name, "missing_required_field", "error", "a value is required"
            )
            if column.type != "string":
                name = f"{column.name}:type"
                self.rules[(column.name, name)] = Rule(column.name, f"invalid_{column.type}", "error", expected(column))
                checks.append(_pandera_check(column, lambda v, t: v.is_null() | t.is_not_null(), name))
            if column.rounding is not None:
                self.rules[(column.name, ROUNDED_RULE)] = Rule(
                    column.name,
                    "altered_value",
                    "warning",
                    f"at most {column.scale} digits after the point: rounded ({column.rounding}) when stored",
                )
                within_scale = partial(_within_scale, column)
                checks.append(_pandera_check(column, within_scale, ROUNDED_RULE))
            for index, check in enumerate(column.checks):
                if check.kind == "unique":
                    continue
                name = f"{column.name}:{index}"
                self.rules[(column.name, name)] = Rule(
                    column.name, check.issue_type, check.severity, check.expected_format
                )
                checks.append(
                    _pandera_check(column, lambda v, t, c=column, k=check: _check_expression(c, k, v, t), name)
                )
            columns[column.name] = pa.Column(pl.Utf8, nullable=not column.required, checks=checks)
        self.schema = pa.DataFrameSchema(columns, strict=False)
        self._compile_failures()

    def _compile_failures(self) -> None:
        """One boolean column per rule of the schema, true where a value fails it, as pandera
        judges: a non-nullable column fails on nulls, a check's null outcome passes if it ignores NA.
        Checks read each value's typed form from a column computed once (`typed`)."""
        failures, keys = [], []
        self.typed = [parsed_value(c, pl.col(c.name)).alias(typed_name(c.name)) for c in self.spec.columns]
        for name, column in self.schema.columns.items():
            value = pl.col(name)
            if not column.nullable:
                failures.append(value.is_null())
                keys.append((name, NOT_NULLABLE))
            for check in column.checks:
                passed = check.statistics["expression"](value, pl.col(typed_name(name)))
                passed = passed.fill_null(check.ignore_na)
                failures.append(passed.not_())
                keys.append((name, check.name))
        self.rule_columns = [f"_rule{i}" for i in range(len(keys))]
        self.error_columns = [
            r for r, k in zip(self.rule_columns, keys, strict=True) if self.rules[k].severity == "error"
        ]
        self.failures = [f.alias(r) for f, r in zip(failures, self.rule_columns, strict=True)]
        self.rule_frame = pl.DataFrame(
            [
                {"rule_key": r, "column": column, "check": check, **self.rules[(column, check)].__dict__}
                for r, (column, check) in zip(self.rule_columns, keys, strict=True)
            ]
        )

    def raw(self, batch: pa_arrow.RecordBatch | pa_arrow.Table | pl.DataFrame) -> pl.DataFrame:
        frame = batch if isinstance(batch, pl.DataFrame) else pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        return frame.with_columns(pl.col(c).cast(pl.Utf8) for c in self.columns)

    def clean(self, columns: list[str], with_nul: list[str]) -> list[pl.Expr]:
        """Trimmed text values with blanks, and the spec's `null_values`, as nulls; the form every
        rule judges."""
        # NUL bytes are stripped: PostgreSQL text cannot hold them, and both warehouses must agree.
        # `validate` reports every value this alters. Only columns holding one pay for the replace.
        cleaned = []
        for c in columns:
            value = pl.col(c).str.replace_all("\x00", "", literal=True) if c in with_nul else pl.col(c)
            value = value.str.strip_chars()
            # `replace` measured twice as fast as a when/then over the same values.
            cleaned.append(value.replace(["", *self.spec.null_values], None).alias(c))
        return cleaned

    def record_id(self) -> pl.Expr:
        """The natural key as one text value: how an issue points back at its record."""
        keys = [pl.col(k).fill_null("") for k in self.spec.natural_key]
        return pl.concat_str(keys, separator="|") if len(keys) > 1 else keys[0]

    def validate(
        self, batch: pa_arrow.RecordBatch | pa_arrow.Table | pl.DataFrame, with_nul: list[str] | None = None
    ) -> ValidatedBatch:
        """Every rule of every row in one polars plan; issues and rejects from the rows that failed one.
        `with_nul` names the columns holding a NUL byte when the caller knows (`columns_with_nul`)."""
        raw = self.raw(batch).with_row_index("_row")
        if with_nul is None:
            found = raw.select(pl.col(c).str.contains("\x00", literal=True).any() for c in self.columns).row(0)
            with_nul = [c for c, has in zip(self.columns, found, strict=True) if has]
        checked = (
            raw.lazy()
            .with_columns(
                _any([pl.col(c).str.contains("\x00", literal=True).fill_null(False) for c in with_nul]).alias("_nul")
            )
            .with_columns(self.clean(self.columns, with_nul))
            .with_columns(self.typed)
            .with_columns(self.failures)
            .drop(typed_name(c.name) for c in self.spec.columns if c.type == "string")
            .collect()
        )
        rejected = _any(self.error_columns)
        accepted = checked.filter(~rejected).drop("_row", "_nul", *self.rule_columns)
        # The few rows that failed a rule or lost a NUL byte, with how issues point back at them.
        flagged = checked.filter(_any(self.rule_columns) | pl.col("_nul"))
        if flagged.is_empty():  # a clean batch: no bookkeeping of issues to build
            return ValidatedBatch(accepted, pl.DataFrame(schema=ISSUE_SCHEMA), pl.DataFrame(schema=FAILED_SCHEMA))
        located = flagged.select("_row", LINE_COLUMN, self.record_id().alias("record_id"), rejected.alias("_rejected"))
        failures = (
            flagged.select("_row", *self.rule_columns)
            .unpivot(index="_row", variable_name="rule_key")
            .filter(pl.col("value"))
            .join(self.rule_frame, on="rule_key")
        )
        flagged_raw = raw.join(flagged.select("_row"), on="_row", how="semi")
        # The offending value, untrimmed, is what the triager needs to see.
        values = flagged_raw.unpivot(on=self.columns, index="_row", variable_name="column", value_name="invalid_value")
        altered = values.filter(pl.col("invalid_value").str.contains("\x00", literal=True))
        shown = values.with_columns(pl.col("invalid_value").str.replace_all("\x00", NUL_SHOWN_AS, literal=True))
        issues = failures.join(shown, on=["_row", "column"], how="left").join(located, on="_row")
        # A value that breaks an error rule needs no further warning about the same field.
        errors_per_field = issues.filter(pl.col("severity") == "error").select("_row", "column").unique()
        issues = pl.concat(
            [
                issues.filter(pl.col("severity") == "error"),
                issues.filter(pl.col("severity") != "error").join(errors_per_field, on=["_row", "column"], how="anti"),
            ]
        ).sort("_row", "column", "check")

        messages = (
            issues.filter(pl.col("severity") == "error")
            .group_by("_row", maintain_order=True)
            .agg(pl.format("{}: {}", pl.col("field_name"), pl.col("issue_type")).str.join("; ").alias("error_message"))
        )
        record_data = flagged_raw.select(
            "_row",
            pl.struct([pl.col(c.name).alias(c.source) for c in self.spec.columns])
            .struct.json_encode()
            .alias("record_data"),
        )
        failed = (
            located.filter(pl.col("_rejected"))
            .join(record_data, on="_row")
            .join(messages, on="_row")
            .sort("_row")
            .select(
                pl.col(LINE_COLUMN).alias("source_line_number"),
                pl.col("record_id").alias("source_record_id"),
                "record_data",
                pl.lit("validation_error").alias("error_type"),
                "error_message",
            )
        )
        issue_frame = issues.select(
            pl.col(LINE_COLUMN).alias("source_line_number"),
            pl.col("record_id").alias("source_record_id"),
            "issue_type",
            "severity",
            "field_name",
            "invalid_value",
            "expected_format",
            pl.col("check").alias("rule"),
        )
        altered_frame = altered.join(located, on="_row").select(
            pl.col(LINE_COLUMN).alias("source_line_number"),
            pl.col("record_id").alias("source_record_id"),
            pl.lit("altered_value").alias("issue_type"),
            pl.lit("warning").alias("severity"),
            pl.col("column").alias("field_name"),
            pl.col("invalid_value").str.replace_all("\x00", NUL_SHOWN_AS, literal=True),
            pl.lit(f"no NUL bytes: the ones shown as {NUL_SHOWN_AS} were removed from the stored value").alias(
                "expected_format"
            ),
            pl.lit(NUL_RULE).alias("rule"),
        )
        return ValidatedBatch(
            accepted=accepted,
            issues=pl.concat([issue_frame.cast(ISSUE_SCHEMA), altered_frame.cast(ISSUE_SCHEMA)]),
            failed=failed.cast(FAILED_SCHEMA),
        )
