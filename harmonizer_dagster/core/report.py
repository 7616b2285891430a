"""The per-source data-quality report, in Markdown: what the legacy triage dashboard showed."""

from __future__ import annotations

from dataclasses import dataclass

from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.triage import IssueGroup
from harmonizer_dagster.core.warehouse import Warehouse

# Issues read, at most, to find a group's example values: a few distinct ones among the first.
EXAMPLE_SCAN = 50


def open_issue_groups(store: Warehouse, spec: SourceSpec, examples: int = 3) -> list[IssueGroup]:
    """The source's pending issues by type and severity, largest first, from the counts kept per
    version; each group's examples are a few distinct values among the first pending issues of
    the latest version that has any. Nothing here reads more than one version's issues, and of
    those at most EXAMPLE_SCAN a group: a report costs the same after a file of millions."""
    groups = store.query(
        "SELECT issue_type, severity, sum(pending), max(source_id) FILTER (WHERE pending > 0) "
        "FROM {schema}.version_issue_counts WHERE source_type = %s GROUP BY issue_type, severity "
        "HAVING sum(pending) > 0 ORDER BY sum(pending) DESC, issue_type",
        (spec.name,),
    )
    found = []
    for issue_type, severity, count, latest in groups:
        rows = store.query(
            "SELECT source_record_id, invalid_value, expected_format FROM {schema}.data_quality_issues "
            f"WHERE source_id = {int(latest)} AND issue_type = %s AND severity = %s "
            "AND resolution_status = 'pending' LIMIT %s",
            (issue_type, severity, EXAMPLE_SCAN),
        )
        distinct = list({value: (record, value, expected) for record, value, expected in reversed(rows)}.values())
        found.append(IssueGroup(spec.name, issue_type, severity, int(count), distinct[::-1][:examples]))
    return found


def quality_report(store: Warehouse, spec: SourceSpec, versions: int = 5) -> tuple[str, dict[str, int]]:
    """Markdown report and headline figures: open issues, check pass rates over the last
    `versions` versions, the issue trend. Read from the registry, the check history and the
    issue counts kept per version, never from all issues."""
    with store.transaction():
        return _quality_report(store, spec, versions)


def _quality_report(store: Warehouse, spec: SourceSpec, versions: int) -> tuple[str, dict[str, int]]:
    groups = open_issue_groups(store, spec)
    lines = [f"# Data quality: {spec.title}", "", "## Open issues", ""]
    if groups:
        lines += ["| type | severity | count | examples |", "|---|---|---:|---|"]
        for g in groups:
            examples = "; ".join(f"{record or '-'}: `{value}`" for record, value, _ in g.examples)
            lines.append(f"| {g.issue_type} | {g.severity} | {g.count} | {examples} |")
    else:
        lines.append("None.")
    recent = store.query(
        "SELECT partition_key, max(source_id) FROM {schema}.sources WHERE source_type = %s AND status = 'completed' "
        "GROUP BY partition_key ORDER BY max(source_id) DESC LIMIT %s",
        (spec.name, versions),
    )
    lines += ["", f"## Checks over the last {len(recent)} file version(s)", ""]
    rates = store.query(
        "SELECT check_name, count(*) FILTER (WHERE passed), count(*) FROM {schema}.data_quality_checks "
        "WHERE asset = %s AND source_id IN (SELECT source_id FROM {schema}.sources WHERE source_type = %s "
        "AND status = 'completed' ORDER BY source_id DESC LIMIT %s) GROUP BY check_name ORDER BY check_name",
        (spec.name, spec.name, versions),
    )
    if rates:
        lines += ["| check | passed | evaluations | pass rate |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {ok} | {total} | {ok / total:.0%} |" for name, ok, total in rates]
    else:
        lines.append("No check has run yet.")
    per_version = [
        (
            key,
            int(
                store.query(
                    "SELECT coalesce(sum(issues), 0) FROM {schema}.version_issue_counts WHERE source_id = %s", (sid,)
                )[0][0]
            ),
        )
        for key, sid in recent[:2]
    ]
    lines += ["", "## Trend", ""]
    if len(per_version) == 2:
        (latest, now), (previous, before) = per_version
        change = now - before
        lines.append(f"{latest}: {now} issues, {'+' if change >= 0 else ''}{change} versus {previous} ({before}).")
    elif per_version:
        lines.append(f"{per_version[0][0]}: {per_version[0][1]} issues; no earlier version to compare with.")
    else:
        lines.append("No file loaded yet.")
    figures = {
        "open_issues": sum(g.count for g in groups),
        "open_errors": sum(g.count for g in groups if g.severity == "error"),
        "versions_loaded": len(recent),
    }
    return "\n".join(lines) + "\n", figures


@dataclass(frozen=True)
class SourceOverview:
    """A source at a glance: its latest file version, what that came to, and what is open."""

    source: str
    version: str
    partition_key: str
    status: str
    counts: dict[str, int]
    checks_passed: int
    checks_run: int
    open_issues: int
    dead_letters: int


def overview(store: Warehouse) -> list[SourceOverview]:
    """Every source the registry knows, by name, with figures from one pass over each table."""
    with store.session() as s:
        latest = s.execute(
            "SELECT source_type, source_version, partition_key, status, records_in_file, records_imported, "
            f"records_failed, records_skipped FROM {store.schema}.sources WHERE source_id IN "
            f"(SELECT max(source_id) FROM {store.schema}.sources GROUP BY source_type) ORDER BY source_type"
        )
        # Each check's latest evaluation of the version shown (a duplicate file is judged by the
        # load it repeats): re-runs of a version replace its figures rather than add to them.
        checks = {
            source: (int(passed), int(total))
            for source, passed, total in s.execute(
                "SELECT asset, count(*) FILTER (WHERE passed), count(*) FROM (SELECT c.asset, c.passed, "
                "row_number() OVER (PARTITION BY c.asset, c.check_name ORDER BY c.evaluated_at DESC, c.run_id DESC) "
                f"AS latest FROM {store.schema}.data_quality_checks c JOIN {store.schema}.sources v "
                "ON c.asset = v.source_type AND c.partition_key = v.partition_key "
                "AND c.source_id = coalesce(v.duplicate_of_source_id, v.source_id) WHERE v.source_id IN "
                f"(SELECT max(source_id) FROM {store.schema}.sources GROUP BY source_type)) AS e "
                "WHERE latest = 1 GROUP BY asset"
            )
        }
        open_issues = dict(
            s.execute(f"SELECT source_type, sum(pending) FROM {store.schema}.version_issue_counts GROUP BY source_type")
        )
        dead = dict(
            s.execute(
                f"SELECT source_type, count(*) FROM {store.schema}.failed_records WHERE NOT reprocessed "
                "GROUP BY source_type"
            )
        )
    names = ("in_file", "imported", "failed", "skipped")
    return [
        SourceOverview(
            source,
            version,
            key,
            status,
            dict(zip(names, (int(c or 0) for c in counts), strict=True)),
            *checks.get(source, (0, 0)),
            int(open_issues.get(source, 0)),
            int(dead.get(source, 0)),
        )
        for source, version, key, status, *counts in latest
    ]
