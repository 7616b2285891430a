"""Validation: a pandera schema generated from the spec, evaluated on whole batches.

Values are judged after trimming, and empty strings count as missing: both pandas and
polars readers disagree on what an empty CSV field is, so the pipeline decides once here.
Every failed rule becomes a row-level issue; rows failing an error-severity rule are
rejected with their raw record, warnings pass through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import pandera.polars as pa
import polars as pl
import pyarrow as pa_arrow

from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.spec import Check, Column, SourceSpec

NOT_NULLABLE = "not_nullable"
# Stripping NUL bytes alters a value, so each altered value is reported under this rule. An
# issue shows them as this symbol: PostgreSQL text cannot hold a NUL.
NUL_RULE = "nul_bytes"
NUL_SHOWN_AS = "\u2400"
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
    accepted: pl.DataFrame
    issues: pl.DataFrame
    failed: pl.DataFrame


def parsed_value(column: Column, value: pl.Expr) -> pl.Expr:
    """The typed value of a trimmed text value, null when it does not parse."""
    if column.type == "integer":
        return value.cast(pl.Int64, strict=False)
    if column.type == "decimal":
        # The warehouse's DECIMAL(p, s): a value that would not fit fails here, not as a NULL later.
        return value.cast(pl.Decimal(column.precision, column.scale), strict=False)
    if column.type == "boolean":
        lowered = value.str.to_lowercase()
        return pl.when(lowered.is_in(TRUE_WORDS)).then(True).when(lowered.is_in(FALSE_WORDS)).then(False)
    if column.type in ("date", "timestamp"):
        dtype = pl.Date if column.type == "date" else pl.Datetime("us")
        return pl.coalesce([value.str.strptime(dtype, fmt, strict=False, exact=True) for fmt in column.parse_formats])
    return value


def _literal(column: Column, bound: str) -> pl.Expr:
    """Range bounds are written in ISO form whatever formats the column's values come in."""
    if column.type == "date":
        return pl.lit(date.fromisoformat(bound[:10]))
    if column.type == "timestamp":
        return pl.lit(datetime.fromisoformat(bound))
    return pl.lit(float(bound))


def _check_expression(column: Column, check: Check, value: pl.Expr) -> pl.Expr:
    """True where the value passes; missing values pass (`required` handles them)."""
    if check.kind == "pattern":
        passed = value.str.contains(check.pattern or "")
    elif check.kind == "allowed_values":
        if check.ignore_case:
            passed = value.str.to_lowercase().is_in([v.lower() for v in check.allowed_values])
        else:
            passed = value.is_in(list(check.allowed_values))
    elif check.kind == "range":
        typed = (
            parsed_value(column, value).cast(pl.Float64)
            if column.type in ("integer", "decimal")
            else (parsed_value(column, value))
        )
        passed = pl.lit(True)
        if check.minimum is not None:
            passed = passed & (typed >= _literal(column, check.minimum))
        if check.maximum is not None:
            passed = passed & (typed <= _literal(column, check.maximum))
        passed = passed | typed.is_null()  # unparseable values are the type check's issue
    else:
        raise ValueError(f"check kind {check.kind} is not evaluated per batch")
    return value.is_null() | passed.fill_null(True)


def _pandera_check(column: Column, expression_of, name: str) -> pa.Check:
    return pa.Check(
        lambda data: data.lazyframe.select(expression_of(pl.col(data.key))),
        name=name,
        error=name,
    )


class SpecValidator:
    """Compiles a spec into a pandera schema once; validates any number of batches."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.rules: dict[tuple[str, str], Rule] = {}
        columns = {}
        for column in spec.columns:
            checks = []
            self.rules[(column.name, NOT_NULLABLE)] = Rule(
                column.name, "missing_required_field", "error", "a value is required"
            )
            if column.type != "string":
                name = f"{column.name}:type"
                expected = (
                    column.type
                    if column.type not in ("date", "timestamp")
                    else (f"{column.type} as " + " or ".join(column.parse_formats))
                )
                self.rules[(column.name, name)] = Rule(column.name, f"invalid_{column.type}", "error", expected)
                checks.append(
                    _pandera_check(column, lambda v, c=column: v.is_null() | parsed_value(c, v).is_not_null(), name)
                )
            for index, check in enumerate(column.checks):
                if check.kind == "unique":
                    continue
                name = f"{column.name}:{index}"
                self.rules[(column.name, name)] = Rule(
                    column.name, check.issue_type, check.severity, check.expected_format
                )
                checks.append(_pandera_check(column, lambda v, c=column, k=check: _check_expression(c, k, v), name))
            columns[column.name] = pa.Column(pl.Utf8, nullable=not column.required, checks=checks)
        self.schema = pa.DataFrameSchema(columns, strict=False)
        self.rule_frame = pl.DataFrame(
            [{"column": col, "check": check, **rule.__dict__} for (col, check), rule in self.rules.items()]
        )

    def raw(self, batch: pa_arrow.RecordBatch | pa_arrow.Table) -> pl.DataFrame:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        return frame.with_columns(pl.col(c.name).cast(pl.Utf8) for c in self.spec.columns)

    @staticmethod
    def clean(raw: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
        """Trimmed text values with blanks as nulls; the form every rule judges."""
        # NUL bytes are stripped: PostgreSQL text cannot hold them, and both warehouses must agree.
        # `validate` reports every value this alters.
        return raw.with_columns(
            pl.col(c).str.replace_all("\x00", "", literal=True).str.strip_chars().replace("", None) for c in columns
        )

    def record_id(self) -> pl.Expr:
        """The natural key as one text value: how an issue points back at its record."""
        keys = [pl.col(k).fill_null("") for k in self.spec.natural_key]
        return pl.concat_str(keys, separator="|") if len(keys) > 1 else keys[0]

    def validate(self, batch: pa_arrow.RecordBatch | pa_arrow.Table) -> ValidatedBatch:
        raw = self.raw(batch)
        cleaned = self.clean(raw, [c.name for c in self.spec.columns]).with_row_index("_row")
        try:
            self.schema.validate(cleaned, lazy=True)
            failures = pl.DataFrame(schema={"column": pl.Utf8, "check": pl.Utf8, "index": pl.Int64})
        except pa.errors.SchemaErrors as errors:
            failures = errors.failure_cases.select(pl.col("column"), pl.col("check"), pl.col("index").cast(pl.Int64))
        unknown = failures.join(self.rule_frame, on=["column", "check"], how="anti")
        if unknown.height:
            raise RuntimeError(f"validation failed outside the spec's rules: {unknown.head(5).to_dicts()}")

        issues = failures.join(self.rule_frame, on=["column", "check"]).join(
            cleaned.select("_row", LINE_COLUMN, self.record_id().alias("record_id")), left_on="index", right_on="_row"
        )
        # The offending value, untrimmed, is what the triager needs to see.
        values = raw.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("index"),
            *[pl.col(c.name) for c in self.spec.columns],
        ).unpivot(index="index", variable_name="column", value_name="invalid_value")
        altered = values.filter(pl.col("invalid_value").str.contains("\x00", literal=True))
        if altered.height:
            values = values.with_columns(pl.col("invalid_value").str.replace_all("\x00", NUL_SHOWN_AS, literal=True))
        issues = issues.join(values, on=["index", "column"], how="left")
        # A value that breaks an error rule needs no further warning about the same field.
        errors_per_field = issues.filter(pl.col("severity") == "error").select("index", "column").unique()
        issues = pl.concat(
            [
                issues.filter(pl.col("severity") == "error"),
                issues.filter(pl.col("severity") != "error").join(errors_per_field, on=["index", "column"], how="anti"),
            ]
        ).sort("index", "column", "check")

        rejected_rows = errors_per_field.select("index").unique()
        accepted = cleaned.join(rejected_rows, left_on="_row", right_on="index", how="anti").drop("_row")

        messages = (
            issues.filter(pl.col("severity") == "error")
            .group_by("index", maintain_order=True)
            .agg(pl.format("{}: {}", pl.col("field_name"), pl.col("issue_type")).str.join("; ").alias("error_message"))
        )
        record_data = raw.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("index"),
            pl.col(LINE_COLUMN).alias("source_line_number"),
            cleaned.select(self.record_id()).to_series().alias("source_record_id"),
            pl.struct([pl.col(c.name).alias(c.source) for c in self.spec.columns])
            .struct.json_encode()
            .alias("record_data"),
        )
        failed = (
            record_data.join(messages, on="index")
            .with_columns(pl.lit("validation_error").alias("error_type"))
            .select(list(FAILED_SCHEMA))
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
        altered_frame = altered.join(
            cleaned.select(pl.col("_row").alias("index"), LINE_COLUMN, self.record_id().alias("record_id")), on="index"
        ).select(
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
