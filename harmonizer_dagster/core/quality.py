"""Data-quality checks of one loaded file version, evaluated in the warehouse.

Each evaluation is recorded in `data_quality_checks` (the history) and handed back to the
caller (the Dagster layer turns it into an asset check result with the same figures).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.sql import quote_ident
from harmonizer_dagster.core.validation import NUL_RULE
from harmonizer_dagster.core.warehouse import Warehouse

# A typed column whose values fail their type this often was probably retyped upstream.
RETYPED_FAILURE_RATE = 0.5


@dataclass(frozen=True)
class Evaluation:
    passed: bool
    observed: float | None
    threshold: float | None
    message: str
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Version:
    """The registry row of the latest completed load of a partition."""

    source_id: int
    file_hash: str
    records_in_file: int
    records_imported: int
    records_failed: int
    records_skipped: int
    extra_fields: tuple[str, ...]


@dataclass(frozen=True)
class QualityCheck:
    name: str
    severity: str  # error checks are blocking: a failing partition is not published
    description: str
    evaluate: Callable[[Warehouse, SourceSpec, str, Version], Evaluation]


def latest_version(store: Warehouse, spec: SourceSpec, partition_key: str) -> Version | None:
    # A file identical to one already loaded is judged by that load.
    rows = store.query(
        "SELECT source_id, file_hash, records_in_file, records_imported, records_failed, records_skipped, "
        "extra_fields FROM {schema}.sources WHERE status = 'completed' AND source_id = ("
        "SELECT coalesce(duplicate_of_source_id, source_id) FROM {schema}.sources WHERE source_type = %s "
        "AND partition_key = %s AND status IN ('completed', 'skipped') ORDER BY source_id DESC LIMIT 1)",
        (spec.name, partition_key),
    )
    if not rows:
        return None
    *numbers, extra = rows[0]
    return Version(*numbers, extra_fields=tuple(extra.split(",")) if extra else ())


def _link_issues(store: Warehouse, check_name: str, source_id: int, by: str, value: str) -> None:
    """Points the version's row-level issues that a check counts at that check."""
    assert by in ("rule", "field_name")
    store.query(
        f"UPDATE {{schema}}.data_quality_issues SET check_name = %s WHERE source_id = %s AND {by} = %s",
        (check_name, source_id, value),
    )


def _reconciliation(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
    accounted = v.records_imported + v.records_failed + v.records_skipped
    counts = {
        "in_file": v.records_in_file,
        "imported": v.records_imported,
        "failed": v.records_failed,
        "skipped": v.records_skipped,
    }
    return Evaluation(
        passed=accounted == v.records_in_file,
        observed=float(v.records_in_file - accounted),
        threshold=0.0,
        message=f"{v.records_in_file} in file = {v.records_imported} imported + {v.records_failed} failed "
        f"+ {v.records_skipped} skipped" + ("" if accounted == v.records_in_file else " does NOT hold"),
        counts=counts,
    )


def _key_unique(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
    keys = ", ".join(quote_ident(k) for k in spec.natural_key)
    duplicated, rows = store.query(
        f"SELECT (SELECT count(*) FROM (SELECT {keys} FROM {store.table(spec.name)} GROUP BY {keys} "
        f"HAVING count(*) > 1) d), (SELECT count(*) FROM {store.table(spec.name)})"
    )[0]
    _link_issues(store, "natural_key_unique", v.source_id, "rule", "natural_key")
    return Evaluation(
        passed=duplicated == 0,
        observed=float(duplicated),
        threshold=0.0,
        message=f"{duplicated} duplicated natural keys among {rows} rows",
        counts={"duplicated_keys": int(duplicated), "table_rows": int(rows)},
    )


def _required_complete(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
    required = [c.name for c in spec.columns if c.required]
    nulls = " + ".join(f"count(*) FILTER (WHERE {quote_ident(c)} IS NULL)" for c in required)
    missing, rows = store.query(
        f"SELECT {nulls}, count(*) FROM {store.table(spec.name)} WHERE _file_hash = %s", (v.file_hash,)
    )[0]
    _link_issues(store, "required_fields_complete", v.source_id, "rule", "not_nullable")
    return Evaluation(
        passed=missing == 0,
        observed=float(missing),
        threshold=0.0,
        message=f"{missing} missing required values in {rows} rows written from this file "
        f"(records missing one were rejected: {v.records_failed} failed records)",
        counts={"missing_values": int(missing), "rows_checked": int(rows), "required_fields": len(required)},
    )


def _pass_rate(column: str, threshold: float) -> Callable[[Warehouse, SourceSpec, str, Version], Evaluation]:
    def evaluate(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
        # A value only cleaned of NUL bytes is still valid: its warning is not a failure.
        failing = store.query(
            "SELECT count(DISTINCT source_line_number) FROM {schema}.data_quality_issues "
            "WHERE source_id = %s AND field_name = %s AND rule <> %s",
            (v.source_id, column, NUL_RULE),
        )[0][0]
        _link_issues(store, f"{column}_pass_rate", v.source_id, "field_name", column)
        rate = 1.0 - failing / v.records_in_file if v.records_in_file else 1.0
        return Evaluation(
            passed=rate >= threshold,
            observed=round(rate, 6),
            threshold=threshold,
            message=f"{rate:.2%} of records have a valid {column} (at least {threshold:.2%} required)",
            counts={"records_failing": int(failing), "records_in_file": v.records_in_file},
        )

    return evaluate


def _schema_drift(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
    typed = [c.name for c in spec.columns if c.type != "string"]
    retyped = []
    if typed and v.records_in_file:
        rows = store.query(
            "SELECT field_name, count(*) FROM {schema}.data_quality_issues WHERE source_id = %s "
            "AND rule LIKE %s GROUP BY field_name",
            (v.source_id, "%:type"),
        )
        retyped = sorted(f for f, n in rows if n / v.records_in_file >= RETYPED_FAILURE_RATE)
    drifted = bool(v.extra_fields or retyped)
    parts = []
    if v.extra_fields:
        parts.append(f"columns not in the spec: {', '.join(v.extra_fields)}")
    if retyped:
        parts.append(f"columns whose values no longer parse as their type: {', '.join(retyped)}")
    return Evaluation(
        passed=not drifted,
        observed=float(len(v.extra_fields) + len(retyped)),
        threshold=0.0,
        message="; ".join(parts) or "the file matches the spec's columns and types",
        counts={"added": list(v.extra_fields), "retyped": retyped},
    )


def checks_for(spec: SourceSpec) -> list[QualityCheck]:
    """The checks a spec implies. Removed columns need no check: the file fails to load."""
    checks = [
        QualityCheck(
            "row_count_reconciliation",
            "error",
            "Every record of the file is imported, failed or skipped.",
            _reconciliation,
        ),
        QualityCheck("natural_key_unique", "error", "No natural key appears twice in the table.", _key_unique),
        QualityCheck(
            "required_fields_complete",
            "error",
            "Rows written from the file have every required value.",
            _required_complete,
        ),
        QualityCheck(
            "schema_drift", "warning", "The file has the spec's columns, and typed values still parse.", _schema_drift
        ),
    ]
    for column in spec.columns:
        rated = [c for c in column.checks if c.min_pass_rate is not None]
        if rated:
            threshold = max(c.min_pass_rate or 0.0 for c in rated)
            severity = "error" if any(c.pass_rate_severity == "error" for c in rated) else "warning"
            checks.append(
                QualityCheck(
                    f"{column.name}_pass_rate",
                    severity,
                    f"At least {threshold:.0%} of records have a valid {column.name}.",
                    _pass_rate(column.name, threshold),
                )
            )
    return checks


def run_check(store: Warehouse, spec: SourceSpec, check: QualityCheck, partition_key: str, run_id: str) -> Evaluation:
    """Evaluates one check on the partition's latest load and records it in the history."""
    version = latest_version(store, spec, partition_key)
    if version is None:
        evaluation = Evaluation(False, None, None, f"{partition_key} has no completed load to check")
    else:
        evaluation = check.evaluate(store, spec, partition_key, version)
    store.query(
        "INSERT INTO {schema}.data_quality_checks (check_name, asset, partition_key, source_id, file_hash, "
        "severity, passed, observed_value, threshold, counts, message, run_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            check.name,
            spec.name,
            partition_key,
            version.source_id if version else None,
            version.file_hash if version else None,
            check.severity,
            evaluation.passed,
            evaluation.observed,
            evaluation.threshold,
            json.dumps(evaluation.counts, sort_keys=True),
            evaluation.message,
            run_id,
        ),
    )
    return evaluation
