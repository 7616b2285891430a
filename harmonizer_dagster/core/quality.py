"""Data-quality checks of one file version, evaluated in the warehouse: on its staged rows
before it is published (the audit), or on the rows it wrote once it was.

Each evaluation is recorded in `data_quality_checks` (the history) and handed back to the
caller (the Dagster layer turns it into an asset check result with the same figures).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harmonizer_dagster.core.reading import UNNAMED
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.sql import quote_ident, quote_literal
from harmonizer_dagster.core.validation import ALTERED_RULES
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.tables import replaced_row

# A typed column whose values fail their type this often was probably retyped upstream.
RETYPED_FAILURE_RATE = 0.5


@dataclass(frozen=True)
class Evaluation:
    passed: bool
    observed: float | None
    threshold: float | None
    message: str
    counts: dict[str, Any] = field(default_factory=dict)


# One line of a version's issue counts: (issue type, severity, field, rule, issues).
IssueCount = tuple[str, str, str | None, str | None, int]


@dataclass(frozen=True)
class Version:
    """The registry row of the latest written load of a partition: staged, held or published."""

    source_id: int
    file_hash: str
    partition_key: str
    arrival: int
    records_in_file: int
    records_imported: int
    records_failed: int
    records_skipped: int
    records_inserted: int
    extra_fields: tuple[str, ...]
    status: str = "completed"
    # The versions before it, as the longest list a check asked for: the anomaly checks share
    # one look at the registry.
    earlier: dict[int, list[EarlierVersion]] = field(default_factory=dict, compare=False, repr=False)
    # Its stored issue counts, read once for the checks that look at them (under "issues").
    counted: dict[str, list[IssueCount]] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class QualityCheck:
    name: str
    severity: str  # error checks are blocking: a failing partition is not published
    description: str
    evaluate: Callable[[Warehouse, SourceSpec, str, Version], Evaluation]


def latest_version(
    store: Warehouse, spec: SourceSpec, partition_key: str, source_id: int | None = None
) -> Version | None:
    """The partition's latest written version, or the version `source_id` when given (what a run
    staged, whatever another run registered since). A file identical to one already loaded is
    judged by that load."""
    if source_id is not None:
        chosen = "SELECT coalesce(duplicate_of_source_id, source_id) FROM {schema}.sources WHERE source_id = %s"
        params: tuple = (source_id,)
    else:
        chosen = (
            "SELECT coalesce(duplicate_of_source_id, source_id) FROM {schema}.sources WHERE source_type = %s "
            f"AND partition_key = %s AND status IN {REGISTERED} ORDER BY source_id DESC LIMIT 1"
        )
        params = (spec.name, partition_key)
    rows = store.query(
        "SELECT source_id, file_hash, partition_key, (SELECT min(a.source_id) FROM {schema}.sources a "
        "WHERE a.source_type = s.source_type AND a.partition_key = s.partition_key), records_in_file, "
        "records_imported, records_failed, records_skipped, records_inserted, extra_fields, status "
        f"FROM {{schema}}.sources s WHERE status IN {WRITTEN} AND source_id = ({chosen})",
        params,
    )
    if not rows:
        return None
    *numbers, extra, status = rows[0]
    return Version(*numbers, extra_fields=tuple(extra.split(",")) if extra else (), status=status)


# A version whose rows are written: published, or staged (and maybe held) awaiting publication.
WRITTEN = "('completed', 'staged', 'held')"
# What the latest version of a partition may be to be judged: written, or skipped as identical
# to a published one (judged by that one).
REGISTERED = "('completed', 'skipped', 'staged', 'held')"


def issue_links(spec: SourceSpec) -> list[tuple[str, str, str]]:
    """Which check each row-level issue counts towards, as (column, value, check), the first
    match winning: stored with the issue when it is published, so no check rewrites issues."""
    rated = [c.name for c in spec.columns if any(check.min_pass_rate is not None for check in c.checks)]
    return [
        *(("field_name", column, f"{column}_pass_rate") for column in rated),
        ("rule", "not_nullable", "required_fields_complete"),
        ("rule", "natural_key", "natural_key_unique"),
    ]


def _written(store: Warehouse, spec: SourceSpec, v: Version) -> str:
    """A relation of the rows this version writes. Published: the rows it wrote in the source
    table, which PostgreSQL finds by an index on `_file_hash` and DuckDB by the zone maps of
    `_arrival` (either way the cost is the version's, not the table's). Staged: the rows it would
    write, the staged rows whose key is new or whose content changed, unless a later-arriving
    file wrote the key; so a check judges a version alike before and after it is published."""
    if v.status == "completed":
        return (
            f"(SELECT * FROM {store.table(spec.name)} WHERE _arrival = {int(v.arrival)} "
            f"AND _file_hash = {quote_literal(v.file_hash)} AND _partition_key = {quote_literal(v.partition_key)})"
        )
    joined = " AND ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in spec.natural_key)
    return (
        f"(SELECT s.* FROM {store.stage_table(spec.name)} s WHERE s._source_id = {int(v.source_id)} "
        f"AND NOT EXISTS (SELECT 1 FROM {store.table(spec.name)} t WHERE {joined} AND NOT ({replaced_row(v.arrival)})))"
    )


def _issue_counts(store: Warehouse, v: Version) -> list[IssueCount]:
    """The version's stored issue counts: (issue type, severity, field, rule, issues)."""
    if "issues" not in v.counted:
        v.counted["issues"] = [
            (t, severity, field_name, rule, int(n))
            for t, severity, field_name, rule, n in store.query(
                "SELECT issue_type, severity, field_name, rule, issues FROM {schema}.version_issue_counts "
                "WHERE source_id = %s",
                (v.source_id,),
            )
        ]
    return v.counted["issues"]


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
    """Only a write can duplicate a key: the keys this version writes are looked up in the table
    (a published version) or among its staged rows (a staged one, whose upsert merges each key
    into one row), unless a unique index of the database already refuses every duplicate (a
    lookup of 1M keys took 4 s on PostgreSQL)."""
    enforced = store.enforces_key(spec) and v.status == "completed"
    if enforced:
        duplicated, rows = 0, store.query(f"SELECT count(*) FROM {_written(store, spec, v)} AS w")[0][0]
    else:
        duplicated, rows = _duplicated_written_keys(store, spec, v)
    how = f": the table's unique index on ({', '.join(spec.natural_key)}) refuses any other" if enforced else ""
    return Evaluation(
        passed=duplicated == 0,
        observed=float(duplicated),
        threshold=0.0,
        message=f"{duplicated} duplicated natural keys among the {rows} rows written from this file{how}",
        counts={"duplicated_keys": int(duplicated), "rows_written": int(rows), "enforced_by_index": int(enforced)},
    )


def _duplicated_written_keys(store: Warehouse, spec: SourceSpec, v: Version) -> tuple[int, int]:
    """How many keys the version writes are there more than once, and its rows."""
    keys = [quote_ident(k) for k in spec.natural_key]
    listed = ", ".join(keys)
    if v.status != "completed":
        duplicated, rows = store.query(
            f"SELECT count(*) FILTER (WHERE n > 1), coalesce(sum(n), 0) FROM (SELECT count(*) AS n "
            f"FROM {store.stage_table(spec.name)} WHERE _source_id = {int(v.source_id)} GROUP BY {listed}) AS g"
        )[0]
        return int(duplicated), int(rows)
    joined = " AND ".join(f"t.{k} = w.{k}" for k in keys)
    table = store.table(spec.name)
    duplicated, rows = store.query(
        f"WITH w AS (SELECT {listed} FROM {_written(store, spec, v)} AS r) "
        f"SELECT (SELECT count(*) FROM (SELECT {', '.join('t.' + k for k in keys)} FROM {table} t "
        f"JOIN (SELECT DISTINCT {listed} FROM w) w ON {joined} GROUP BY {', '.join('t.' + k for k in keys)} "
        "HAVING count(*) > 1) d), (SELECT count(*) FROM w)"
    )[0]
    return int(duplicated), int(rows)


def _required_complete(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
    required = [c.name for c in spec.columns if c.required]
    nulls = " + ".join(f"count(*) FILTER (WHERE {quote_ident(c)} IS NULL)" for c in required) or "0"
    missing, rows = store.query(f"SELECT {nulls}, count(*) FROM {_written(store, spec, v)} AS w")[0]
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
        # A value only altered on purpose (NUL bytes removed, rounded) is valid: its warning is no failure. The
        # stored counts tell whether the column has issues at all; only then are the version's
        # own issues (found by its id) read, for the records they fall on.
        flagged = any(f == column and rule not in ALTERED_RULES for _, _, f, rule, _ in _issue_counts(store, v))
        failing = (
            store.query(
                "SELECT count(DISTINCT source_line_number) FROM {schema}.data_quality_issues "
                f"WHERE source_id = {int(v.source_id)} AND field_name = %s AND rule NOT IN (%s, %s)",
                (column, *ALTERED_RULES),
            )[0][0]
            if flagged
            else 0
        )
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
        failures: dict[str, int] = {}
        for _, _, field_name, rule, n in _issue_counts(store, v):
            if field_name and rule and rule.endswith(":type"):
                failures[field_name] = failures.get(field_name, 0) + n
        retyped = sorted(f for f, n in failures.items() if n / v.records_in_file >= RETYPED_FAILURE_RATE)
    # Under `evolve` the new columns were loaded into columns of their own: no drift, but recorded.
    named = [f for f in v.extra_fields if not f.startswith(UNNAMED)] if spec.schema_evolution == "evolve" else []
    evolved = spec.evolved(named).columns[len(spec.columns) :]
    unloaded = [f for f in v.extra_fields if f not in named]
    parts = []
    if evolved:
        parts.append("columns added to the table: " + ", ".join(f"{c.name} (from '{c.source}')" for c in evolved))
    if unloaded:
        parts.append(f"columns not in the spec: {', '.join(unloaded)}")
    if retyped:
        parts.append(f"columns whose values no longer parse as their type: {', '.join(retyped)}")
    counts: dict[str, Any] = {"added": list(v.extra_fields), "retyped": retyped}
    if evolved:
        counts["evolved"] = {c.name: c.source for c in evolved}
    return Evaluation(
        passed=not (unloaded or retyped),
        observed=float(len(unloaded) + len(retyped)),
        threshold=0.0,
        message="; ".join(parts) or "the file matches the spec's columns and types",
        counts=counts,
    )


def _rejected_share(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
    """A version whose records are mostly rejected (a naive spec, every key missing, a file of
    another layout) would publish next to nothing: it fails, so it is held back."""
    threshold = spec.max_rejected_rate
    rate = v.records_failed / v.records_in_file if v.records_in_file else 0.0
    return Evaluation(
        passed=rate <= threshold,
        observed=round(rate, 6),
        threshold=threshold,
        message=f"{rate:.2%} of records rejected ({v.records_failed} of {v.records_in_file}; at most "
        f"{threshold:.2%} allowed by max_rejected_rate)",
        counts={"records_failed": v.records_failed, "records_in_file": v.records_in_file},
    )


@dataclass(frozen=True)
class EarlierVersion:
    """The registry counts of a version an anomaly check compares with."""

    source_id: int
    records_in_file: int
    records_imported: int
    records_failed: int


NO_EARLIER = "no earlier version to compare with"


def earlier_versions(store: Warehouse, spec: SourceSpec, v: Version, limit: int) -> list[EarlierVersion]:
    """The latest completed load of each of the `limit` partitions that arrived before the judged
    version's partition, the most recent first. Arrival is a partition's first registration, as
    the upsert orders versions; a partition's own earlier loads and skipped duplicates are left out."""
    known = next((rows for fetched, rows in v.earlier.items() if fetched >= limit), None)
    if known is not None:
        return known[:limit]
    rows = store.query(
        "WITH partitions AS (SELECT partition_key, min(source_id) AS arrival, "
        "max(source_id) FILTER (WHERE status = 'completed') AS latest "
        "FROM {schema}.sources WHERE source_type = %s GROUP BY partition_key) "
        "SELECT s.source_id, s.records_in_file, s.records_imported, s.records_failed "
        "FROM partitions p JOIN {schema}.sources s ON s.source_id = p.latest "
        "WHERE p.arrival < (SELECT p2.arrival FROM partitions p2 JOIN {schema}.sources v "
        "ON v.partition_key = p2.partition_key WHERE v.source_id = %s) "
        "ORDER BY p.arrival DESC LIMIT %s",
        (spec.name, v.source_id, limit),
    )
    v.earlier[limit] = [EarlierVersion(*(int(n or 0) for n in row)) for row in rows]
    return v.earlier[limit]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _volume_change(threshold: float, versions: int) -> Callable[[Warehouse, SourceSpec, str, Version], Evaluation]:
    def evaluate(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
        earlier = earlier_versions(store, spec, v, versions)
        if not earlier:
            return Evaluation(True, None, threshold, NO_EARLIER)
        baseline = _median([e.records_in_file for e in earlier])
        change = (v.records_in_file - baseline) / max(baseline, 1.0)  # an empty baseline is one record
        return Evaluation(
            passed=abs(change) <= threshold,
            observed=round(change, 6),
            threshold=threshold,
            message=f"{v.records_in_file} records in the file, {change:+.1%} against the median of "
            f"{len(earlier)} earlier version(s) ({baseline:.12g}; a change of at most {threshold:.0%} expected)",
            counts={
                "records_in_file": v.records_in_file,
                "ratio": round(v.records_in_file / max(baseline, 1.0), 6),
                "baseline": baseline,
                "previous": earlier[0].records_in_file,
                "versions_compared": len(earlier),
            },
        )

    return evaluate


def _rejected_rate(threshold: float, versions: int) -> Callable[[Warehouse, SourceSpec, str, Version], Evaluation]:
    def evaluate(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
        earlier = [e for e in earlier_versions(store, spec, v, versions) if e.records_in_file]
        if not earlier:
            return Evaluation(True, None, threshold, NO_EARLIER)
        rate = v.records_failed / v.records_in_file if v.records_in_file else 0.0
        baseline = _median([e.records_failed / e.records_in_file for e in earlier])
        increase = rate - baseline
        return Evaluation(
            passed=increase <= threshold,
            observed=round(increase, 6),
            threshold=threshold,
            message=f"{rate:.2%} of records rejected ({v.records_failed} of {v.records_in_file}) against "
            f"{baseline:.2%} in the median of {len(earlier)} earlier version(s) (a rise of at most "
            f"{threshold:.2%} expected)",
            counts={
                "rejected_rate": round(rate, 6),
                "baseline": round(baseline, 6),
                "records_failed": v.records_failed,
                "records_in_file": v.records_in_file,
                "versions_compared": len(earlier),
            },
        )

    return evaluate


def _null_rate_drift(threshold: float, versions: int) -> Callable[[Warehouse, SourceSpec, str, Version], Evaluation]:
    """One check for every column, naming the columns over the threshold: a column emptied
    upstream shows as one failing check on the partition, not one of a dozen, and the UI lists
    as many checks per source whatever its width.

    A version's null rates are estimated from the rows it wrote. An unchanged record keeps the
    row (and provenance) of the file that wrote it first, so the rows a version writes are its
    new and changed records only; its unchanged ones hold the same values as before. So the rise
    of a column's null rate is the nulls in the written rows beyond the baseline's share of them,
    over the records imported: exact for a column that empties (every record holding a value
    changes), and zero for a file repeating the previous one. Each version's rates are kept in
    this check's `counts`, which later versions read: rows may since have been overwritten.
    Required columns are left out: a record missing one is rejected (see rejected_rate_drift)."""

    def evaluate(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
        nullable = [c.name for c in spec.columns if not c.required]
        counted = ", ".join(f"count(*) FILTER (WHERE {quote_ident(c)} IS NULL)" for c in nullable)
        written, *nulls = store.query(
            f"SELECT count(*){', ' if counted else ''}{counted} FROM {_written(store, spec, v)} AS w"
        )[0]
        earlier = earlier_versions(store, spec, v, versions)
        baseline = _baseline_null_rates(store, spec, [e.source_id for e in earlier])
        rates, increases = {}, {}
        for column, count in zip(nullable, nulls, strict=True):
            if column in baseline and v.records_imported:
                increases[column] = (count - baseline[column] * written) / v.records_imported
                rates[column] = round(min(max(baseline[column] + increases[column], 0.0), 1.0), 6)
            elif written:
                rates[column] = round(count / written, 6)
        counts: dict[str, Any] = {"null_rates": rates, "rows_written": int(written)}
        if not increases:
            if not earlier:
                message = NO_EARLIER
            elif not baseline:
                message = "the earlier versions have no recorded null rates to compare with"
            else:
                message = "no record imported: no null rate to compare"
            return Evaluation(True, None, threshold, message, counts)
        over = sorted(c for c, rise in increases.items() if rise > threshold)
        worst = max(increases, key=lambda c: increases[c])
        counts |= {"baseline_null_rates": {c: round(baseline[c], 6) for c in increases}, "columns_over": over}
        described = ", ".join(f"{c} from {baseline[c]:.1%} to {rates[c]:.1%}" for c in over)
        return Evaluation(
            passed=not over,
            observed=round(increases[worst], 6),
            threshold=threshold,
            message=f"null rate rose by more than {threshold:.0%}: {described}"
            if over
            else f"no column's null rate rose by more than {threshold:.0%} (largest rise: {worst}, "
            f"{increases[worst]:+.1%})",
            counts=counts,
        )

    return evaluate


def _baseline_null_rates(store: Warehouse, spec: SourceSpec, earlier: list[int]) -> dict[str, float]:
    """Each column's median null rate over the earlier versions, from their latest recorded evaluations."""
    if not earlier:
        return {}
    recorded: dict[int, dict[str, float]] = {}
    for source_id, counts in store.query(
        "SELECT source_id, counts FROM {schema}.data_quality_checks WHERE asset = %s AND check_name = %s "
        f"AND source_id IN ({', '.join(['%s'] * len(earlier))}) ORDER BY evaluated_at",
        (spec.name, "null_rate_drift", *earlier),
    ):
        recorded[int(source_id)] = json.loads(counts).get("null_rates", {})
    columns = {c for rates in recorded.values() for c in rates}
    return {c: _median([rates[c] for rates in recorded.values() if c in rates]) for c in columns}


def _key_churn(threshold: float, _versions: int) -> Callable[[Warehouse, SourceSpec, str, Version], Evaluation]:
    """Compares the version's natural keys with the previous version's from registry counts alone,
    so it costs nothing on a million-row file. The upsert counts the keys no earlier load wrote
    (inserted) and those it re-delivered (imported - inserted); unchanged records keep an older
    file's provenance, so the table cannot tell which version delivered a key. New keys are the
    inserted ones; dropped keys are the previous version's not re-delivered. Exact for feeds that
    deliver a full snapshot each version, loaded once; a key absent from the previous version but
    loaded before (by an older version, or this partition's own earlier load) counts as neither
    new nor dropped, so both shares are lower bounds."""

    def evaluate(store: Warehouse, spec: SourceSpec, key: str, v: Version) -> Evaluation:
        earlier = earlier_versions(store, spec, v, 1)
        if not earlier:
            return Evaluation(True, None, threshold, NO_EARLIER)
        previous = earlier[0].records_imported
        new = v.records_inserted
        dropped = max(previous - (v.records_imported - new), 0)
        new_share = new / v.records_imported if v.records_imported else 0.0
        dropped_share = dropped / previous if previous else 0.0
        observed = max(new_share, dropped_share)
        return Evaluation(
            passed=observed <= threshold,
            observed=round(observed, 6),
            threshold=threshold,
            message=f"{new_share:.1%} of the {v.records_imported} keys are new, {dropped_share:.1%} of the previous "
            f"version's {previous} keys are gone (at most {threshold:.0%} expected)",
            counts={
                "new_keys": new,
                "dropped_keys": dropped,
                "keys": v.records_imported,
                "previous_keys": previous,
            },
        )

    return evaluate


def _anomaly_checks(spec: SourceSpec) -> list[QualityCheck]:
    """The checks comparing a version with the earlier ones, for the thresholds the spec sets."""
    a = spec.anomalies
    if a is None:
        return []
    declared = [
        (
            "volume_change",
            a.volume_change,
            "The number of records stays within {:.0%} of the median of the earlier versions.",
            _volume_change,
        ),
        (
            "null_rate_drift",
            a.null_rate_increase,
            "No column's share of nulls rises more than {:.0%} over the earlier versions.",
            _null_rate_drift,
        ),
        (
            "rejected_rate_drift",
            a.rejected_rate_increase,
            "The share of rejected records rises no more than {:.0%} over the earlier versions.",
            _rejected_rate,
        ),
        (
            "key_churn",
            a.key_churn,
            "At most {:.0%} of natural keys are new, or gone, since the previous version.",
            _key_churn,
        ),
    ]
    return [
        QualityCheck(name, a.severity, description.format(threshold), build(threshold, a.baseline_versions))
        for name, threshold, description, build in declared
        if threshold is not None
    ]


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
            "rejected_rate",
            "error",
            f"At most {spec.max_rejected_rate:.0%} of the file's records are rejected.",
            _rejected_share,
        ),
        QualityCheck(
            "schema_drift",
            # A frozen schema blocks a version whose typed values stopped parsing (new or missing
            # columns already failed its load).
            "error" if spec.schema_evolution == "freeze" else "warning",
            "The file has the spec's columns, and typed values still parse.",
            _schema_drift,
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
    return checks + _anomaly_checks(spec)


def run_check(store: Warehouse, spec: SourceSpec, check: QualityCheck, partition_key: str, run_id: str) -> Evaluation:
    """Evaluates one check on the partition's latest load and records it in the history, in
    one transaction."""
    ((_, evaluation),) = run_checks(store, spec, [check], partition_key, run_id)
    return evaluation


def run_checks(
    store: Warehouse,
    spec: SourceSpec,
    checks: Sequence[QualityCheck],
    partition_key: str,
    run_id: str,
    source_id: int | None = None,
) -> list[tuple[QualityCheck, Evaluation]]:
    """Evaluates the checks on the partition's latest load (or the version `source_id`) and
    records them in the history, in one transaction: the version is looked up once, and the
    history rows written together."""
    return judge_version(store, spec, checks, partition_key, run_id, source_id)[0]


def judge_version(
    store: Warehouse,
    spec: SourceSpec,
    checks: Sequence[QualityCheck],
    partition_key: str,
    run_id: str,
    source_id: int | None,
) -> tuple[list[tuple[QualityCheck, Evaluation]], Version | None]:
    """`run_checks`, also handing back the version judged (None when there is none)."""
    with store.transaction():
        version = latest_version(store, spec, partition_key, source_id)
        evaluations = [
            (check, check.evaluate(store, spec, partition_key, version))
            if version
            else (check, Evaluation(False, None, None, f"{partition_key} has no completed load to check"))
            for check in checks
        ]
        rows = [
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
            )
            for check, evaluation in evaluations
        ]
        if rows:
            values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
            store.query(
                "INSERT INTO {schema}.data_quality_checks (check_name, asset, partition_key, source_id, file_hash, "
                f"severity, passed, observed_value, threshold, counts, message, run_id) VALUES {values}",
                [value for row in rows for value in row],
            )
    return evaluations, version
