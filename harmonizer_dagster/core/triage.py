"""Triage of data-quality issues: the legacy dashboard's views and actions, as functions.

Actions: `resolve` (with a note), `ignore` (accepted variance), `auto_fix` (create a rule
that fixes such values on every later load) and `manual_fix` (a corrected value for the
selected value, kept as a rule too, so the fix survives reloads and reaches the DLQ).
A fix marks only the issues whose value its rule repairs; the others stay pending.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.rules import Rule, apply_rules
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.sql import quote_ident
from harmonizer_dagster.core.validation import SpecValidator
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.base import SavedRule

ACTIONS = {"resolve": "resolved", "ignore": "ignored", "auto_fix": "auto_fix", "manual_fix": "manual_fix"}
FIXES = ("auto_fix", "manual_fix")
# Fixed values per UPDATE statement: the bound parameters stay far below PostgreSQL's limit.
UPDATE_BATCH = 1000
# An issue listing's columns, in the order every format shows them.
ISSUE_COLUMNS = (
    "issue_id",
    "severity",
    "issue_type",
    "source_type",
    "partition_key",
    "source_line_number",
    "field_name",
    "invalid_value",
    "resolution_status",
    "source_record_id",
    "expected_format",
)
# The terminal table: header, column and the widest a cell may get.
TABLE = (
    ("id", "issue_id", 36),
    ("severity", "severity", 8),
    ("type", "issue_type", 24),
    ("source", "source_type", 20),
    ("file", "partition_key", 28),
    ("line", "source_line_number", 8),
    ("field", "field_name", 20),
    ("value", "invalid_value", 24),
    ("status", "resolution_status", 10),
)


@dataclass(frozen=True)
class Selection:
    """Which issues an action applies to; every given criterion must hold."""

    issue_ids: tuple[str, ...] = ()
    issue_type: str | None = None
    source: str | None = None
    partition_key: str | None = None
    field_name: str | None = None
    severity: str | None = None
    status: str | None = "pending"

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["TRUE"], []
        if self.issue_ids:
            clauses.append(f"CAST(issue_id AS VARCHAR) IN ({', '.join(['%s'] * len(self.issue_ids))})")
            params += list(self.issue_ids)
        for column, value in (
            ("issue_type", self.issue_type),
            ("source_type", self.source),
            ("partition_key", self.partition_key),
            ("field_name", self.field_name),
            ("severity", self.severity),
            ("resolution_status", self.status),
        ):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class IssueGroup:
    source: str
    issue_type: str
    severity: str
    count: int
    examples: list[tuple[str | None, str | None, str | None]] = field(default_factory=list)


def summarize(store: Warehouse, selection: Selection, examples: int = 3) -> list[IssueGroup]:
    """Issues grouped by source, type and severity, largest first, each with the first
    occurrences of a few distinct values: a value repeated would tell the triager nothing."""
    where, params = selection.where()
    groups = store.query(
        "SELECT source_type, issue_type, severity, count(*) FROM {schema}.data_quality_issues "
        f"WHERE {where} GROUP BY source_type, issue_type, severity ORDER BY count(*) DESC, issue_type",
        params,
    )
    samples = defaultdict(list)
    for source, issue_type, severity, *example in store.query(
        "SELECT source_type, issue_type, severity, source_record_id, invalid_value, expected_format FROM ("
        "SELECT *, row_number() OVER (PARTITION BY source_type, issue_type, severity "
        "ORDER BY partition_key, source_line_number, field_name) AS example FROM ("
        "SELECT source_type, issue_type, severity, source_record_id, invalid_value, expected_format, "
        "partition_key, source_line_number, field_name, row_number() OVER (PARTITION BY source_type, issue_type, "
        "severity, invalid_value ORDER BY partition_key, source_line_number, field_name) AS occurrence "
        f"FROM {{schema}}.data_quality_issues WHERE {where}) AS o WHERE occurrence = 1) AS d "
        "WHERE example <= %s ORDER BY example",
        [*params, examples],
    ):
        samples[(source, issue_type, severity)].append(tuple(example))
    return [
        IssueGroup(source, issue_type, severity, int(count), samples[(source, issue_type, severity)])
        for source, issue_type, severity, count in groups
    ]


def escaped(text: str) -> str:
    """Text on one terminal line: newlines, tabs and other control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """A count with its noun in the right number: "1 issue", "2 issues"."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def shown(value: object, width: int = 40) -> str:
    """A value as a terminal cell: escaped, and cut with an ellipsis past `width` characters."""
    text = "(no value)" if value is None else escaped(str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def render(groups: list[IssueGroup]) -> str:
    """The legacy triage dashboard, as text."""
    total = sum(g.count for g in groups)
    lines = [f"Data Quality Issues ({total} selected)", ""]
    for group in groups:
        mark = "ERROR" if group.severity == "error" else "warn "
        lines.append(f"{mark} {group.source}: {group.issue_type} ({counted(group.count, 'issue')})")
        for record, value, expected in group.examples:
            value_text = shown(value) if value is None else f"'{shown(value)}'"
            lines.append(f'      {shown(record or "-")}: {value_text} fails "{shown(expected, 80)}"')
    return "\n".join(lines)


@dataclass(frozen=True)
class IssuePage:
    """One page of the selected issues (dicts keyed by ISSUE_COLUMNS) and how many match in all."""

    rows: list[dict[str, Any]]
    total: int
    page: int
    limit: int

    @property
    def pages(self) -> int:
        """How many pages the selection fills (at least one, the empty one)."""
        return max(1, -(-self.total // self.limit))


def list_issues(
    store: Warehouse, selection: Selection, page: int = 1, limit: int = 50, total: int | None = None
) -> IssuePage:
    """The selected issues a page at a time, errors first, then by source, file and line: the
    database sorts and cuts, so a listing stays quick with hundreds of thousands of issues.
    A caller that already counted the selection (the grouped view) passes `total`."""
    where, params = selection.where()
    order = "severity, source_type, partition_key, source_line_number, field_name, rule, issue_id"
    rows, total = store.page("data_quality_issues", ISSUE_COLUMNS, where, params, order, page, limit, total)
    return IssuePage(rows, total, page, limit)


def render_page(page: IssuePage) -> str:
    """A page of issues as an aligned terminal table, with where it is in the whole listing."""
    if not page.total:
        return "No issues match."
    first = (page.page - 1) * page.limit + 1
    where = f"page {page.page:,} of {page.pages:,}"
    if not page.rows:
        return f"{where}: past the end of the {counted(page.total, 'issue')}; the last page is --page {page.pages}"
    cells = [[shown(row[column], width) for _, column, width in TABLE] for row in page.rows]
    widths = [max(len(header), *(len(r[i]) for r in cells)) for i, (header, _, _) in enumerate(TABLE)]
    lines = [
        "  ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)).rstrip()
        for row in [[header for header, _, _ in TABLE], *cells]
    ]
    footer = f"{where}: showing {first:,}-{first + len(page.rows) - 1:,} of {page.total:,}"
    if page.page < page.pages:
        footer += f"; next: --page {page.page + 1}"
    return "\n".join([*lines, "", footer])


@dataclass(frozen=True)
class Fix:
    """The value fix an auto_fix or manual_fix asks for: exactly one of the three is given."""

    pad_to_width: int | None = None
    date_format: str | None = None
    map_to: str | None = None

    def rule(self, value: str | None) -> tuple[str, dict[str, Any]]:
        """The transformation rule (kind, params) that fixes `value` on every later load."""
        if self.map_to is not None:
            return "map_value", {"from": (value or "").strip(), "to": self.map_to}
        if self.pad_to_width is not None:
            return "pad_left", {"width": self.pad_to_width, "fill": "0"}
        return "date_format", {"format": self.date_format}

    def __str__(self) -> str:
        if self.map_to is not None:
            return f"mapping to {self.map_to!r}"
        if self.pad_to_width is not None:
            return f"padding to {self.pad_to_width}"
        return f"reading dates as {self.date_format}"


@dataclass(frozen=True)
class Outcome:
    """What a triage action changed. A fix also counts the selected issues it cannot fix: they
    stay pending, so nothing a rule does not repair drops off the worklist. `rules` are the
    rules the fixed issues point to: those `created` now, the others identical rules that
    existed (`reenabled` among them if they had been disabled)."""

    action: str
    issues: int
    rules: list[int] = field(default_factory=list)
    unfixed: int = 0
    unfixed_examples: list[str] = field(default_factory=list)
    fix: str = ""
    created: list[int] = field(default_factory=list)
    reenabled: list[int] = field(default_factory=list)

    @property
    def reused(self) -> list[int]:
        return [rule_id for rule_id in self.rules if rule_id not in self.created]

    def message(self) -> str:
        if self.action not in FIXES:
            return f"{self.action}: {counted(self.issues, 'issue')} updated"
        text = f"{self.action}: {counted(self.issues, 'issue')} fixed"
        if self.unfixed:
            text += (
                f"; {self.unfixed:,} could not be fixed by {self.fix} and "
                f"{'stays' if self.unfixed == 1 else 'stay'} pending (e.g. {', '.join(self.unfixed_examples)})"
            )
        named = ", ".join(f"rule {r}" for r in self.created)
        text += f"; {counted(len(self.created), 'rule')} created ({named})" if self.created else "; no rule created"
        if self.reused:
            named = ", ".join(f"rule {r}" + (" enabled again" if r in self.reenabled else "") for r in self.reused)
            text += f"; {counted(len(self.reused), 'existing rule')} reused ({named})"
        return text


def act(
    store: Warehouse,
    selection: Selection,
    action: str,
    note: str = "",
    *,
    specs: Iterable[SourceSpec] = (),
    pad_to_width: int | None = None,
    date_format: str | None = None,
    map_to: str | None = None,
    actor: str | None = None,
) -> Outcome:
    """Applies a triage action to the selected issues; returns what changed. `actor` (who acted:
    the web page's authenticated user, the CLI's OS user) is kept with each issue it changes.

    auto_fix needs one of pad_to_width, date_format or map_to (map_to maps every selected
    invalid value to it); manual_fix needs map_to, the corrected value. A fix is checked against
    the specs (of the selected sources): it marks, and creates rules for, only the issues whose
    fixed value then passes validation."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    where, params = selection.where()
    if action not in FIXES:
        with store.transaction():
            changed = store.query(
                "UPDATE {schema}.data_quality_issues SET resolution_status = %s, resolution_notes = %s, "
                f"resolved_at = now(), resolved_by = %s, fix_rule_id = NULL WHERE {where} RETURNING source_id",
                [ACTIONS[action], note or None, actor, *params],
            )
            store.recount([row[0] for row in changed])
        return Outcome(action, len(changed))
    if action == "manual_fix" and map_to is None:
        raise ValueError("manual_fix needs the corrected value")
    if sum(x is not None for x in (pad_to_width, date_format, map_to)) != 1:
        raise ValueError("auto_fix needs exactly one of pad_to_width, date_format, map_to")
    fix = Fix(pad_to_width, date_format, map_to)
    candidates = store.query(
        "SELECT source_type, field_name, issue_type, rule, invalid_value, count(*) FROM {schema}.data_quality_issues "
        f"WHERE {where} GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 5",
        params,
    )
    repaired = _repaired(candidates, {spec.name: spec for spec in specs}, fix)
    # One rule per source, field, kind and parameters, whichever issue types it settles.
    saved: dict[tuple[str, str, str, str], SavedRule] = {}
    fixed_keys, fixed = [], 0
    for source, field_name, issue_type, check, value, count in candidates:
        if (source, field_name, check, value) not in repaired:
            continue
        kind, rule_params = fix.rule(value)
        key = (source, field_name, kind, json.dumps(rule_params, sort_keys=True))
        if key not in saved:
            saved[key] = store.add_rule(source, field_name, kind, rule_params, note, issue_type)
        fixed_keys.append((source, field_name, issue_type, check, value, saved[key].rule_id))
        fixed += int(count)
    _mark_fixed(store, where, params, fixed_keys, ACTIONS[action], note, actor)
    unfixed = [c for c in candidates if (c[0], c[1], c[3], c[4]) not in repaired]
    rules = list(saved.values())
    return Outcome(
        action,
        fixed,
        [r.rule_id for r in rules],
        sum(int(c[5]) for c in unfixed),
        list(dict.fromkeys(shown(c[4]) for c in unfixed))[:3],
        str(fix),
        created=[r.rule_id for r in rules if r.outcome == "created"],
        reenabled=[r.rule_id for r in rules if r.outcome == "re-enabled"],
    )


def _repaired(candidates: list[tuple], specs: dict[str, SourceSpec], fix: Fix) -> set[tuple]:
    """(source, field, check, value) of the candidate issues whose value passes once fixed.

    The fix's rule is applied and the result judged by the spec's own validator, exactly as
    the next load will do: a value is repaired when neither the check that raised the issue nor
    any error-severity check of its column rejects it. Issues no value rule can settle (fields
    absent, duplicates, unparseable lines) are never repaired."""
    by_source: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    for source, field_name, _, check, value, _ in candidates:
        if field_name is not None:
            by_source[source].append((field_name, check, value))
    repaired = set()
    for source, items in by_source.items():
        if source not in specs:
            raise ValueError(f"no spec for source {source}: cannot check which values the fix repairs")
        spec = specs[source]
        validator = SpecValidator(spec)
        items = [item for item in dict.fromkeys(items) if item[:2] in validator.rules]
        if not items:
            continue
        by_rule: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for row, (field_name, _, value) in enumerate(items):
            kind, rule_params = fix.rule(value)
            by_rule[(field_name, kind, json.dumps(rule_params, sort_keys=True))].append(row)
        fixed = []
        for (field_name, kind, rule_params), rows in by_rule.items():
            raw = pl.DataFrame(
                {LINE_COLUMN: rows, field_name: [items[row][2] for row in rows]},
                schema={LINE_COLUMN: pl.Int64, field_name: pl.Utf8},
            )
            fixed.append(apply_rules(raw, [Rule(0, field_name, kind, json.loads(rule_params))])[0])
        batch = pl.concat(fixed, how="diagonal")
        batch = batch.with_columns(pl.lit(None, pl.Utf8).alias(c.name) for c in spec.columns if c.name not in batch)
        judged = pl.DataFrame(
            {
                "source_line_number": range(len(items)),
                "field_name": [item[0] for item in items],
                "check": [item[1] for item in items],
            },
            schema={"source_line_number": pl.Int64, "field_name": pl.Utf8, "check": pl.Utf8},
        )
        failing = set(
            validator.validate(batch.to_arrow())
            .issues.join(judged, on=["source_line_number", "field_name"])
            .filter((pl.col("rule") == pl.col("check")) | (pl.col("severity") == "error"))["source_line_number"]
        )
        repaired |= {(source, *item) for row, item in enumerate(items) if row not in failing}
    return repaired


def _mark_fixed(
    store: Warehouse,
    where: str,
    params: list[Any],
    fixed_keys: list[tuple],
    status: str,
    note: str,
    actor: str | None,
) -> None:
    """Marks the selected issues with a repaired value, each with the rule that repairs it, in
    one transaction. (No RETURNING: DuckDB takes seconds to return 100k ids; the candidates
    query already counted them.)"""
    with store.transaction():
        # The versions whose issue counts the marks change, counted again in the same transaction.
        selected = f"SELECT DISTINCT source_id FROM {{schema}}.data_quality_issues WHERE {where}"
        versions = [row[0] for row in store.query(selected, params)]
        for start in range(0, len(fixed_keys), UPDATE_BATCH):
            chunk = fixed_keys[start : start + UPDATE_BATCH]
            store.query(
                f"UPDATE {store.schema}.data_quality_issues SET resolution_status = %s, resolution_notes = %s, "
                "resolved_at = now(), resolved_by = %s, fix_rule_id = v.rule_id FROM (VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
                + ") AS v(fixed_source, fixed_field, fixed_type, fixed_check, fixed_value, rule_id) "
                f"WHERE {where} AND source_type = v.fixed_source AND field_name = v.fixed_field "
                "AND issue_type = v.fixed_type AND rule = v.fixed_check AND invalid_value = v.fixed_value",
                [status, note or None, actor, *[value for key in chunk for value in key], *params],
            )
        store.recount(versions)


# The issue filters a page offers, by the name each goes by, and the column it selects on.
FACETS = {
    "source": "source_type",
    "partition": "partition_key",
    "field": "field_name",
    "severity": "severity",
    "status": "resolution_status",
}


def facets(store: Warehouse, limit: int = 500) -> dict[str, list[str]]:
    """The values each filter can take, as the issues hold them, so a steward picks rather than types."""
    with store.session() as s:
        return {
            name: [
                value
                for (value,) in s.execute(
                    f"SELECT DISTINCT {column} FROM {store.schema}.data_quality_issues WHERE {column} IS NOT NULL "
                    "ORDER BY 1 LIMIT %s",
                    [limit],
                )
            ]
            for name, column in FACETS.items()
        }


@dataclass(frozen=True)
class RuleSummary:
    """A learned rule and how many values it has fixed: those loads rewrote with it, and those
    whose issues a triage fix settled with it that no load has rewritten yet (the figure is
    right the moment the fix is made, and a reload neither loses nor doubles them)."""

    rule_id: int
    source: str
    field_name: str
    kind: str
    params: str
    enabled: bool
    note: str | None
    issue_type: str | None
    created_at: Any
    fixed: int


def list_rules(store: Warehouse) -> list[RuleSummary]:
    """Every transformation rule, oldest first, with the count of values it fixed."""
    rows = store.query(
        "SELECT r.rule_id, r.source_type, r.field_name, r.kind, r.params, r.enabled, r.note, "
        "r.created_from_issue_type, r.created_at, coalesce(f.fixed, 0) + coalesce(i.fixed, 0) "
        "FROM {schema}.transformation_rules r "
        "LEFT JOIN (SELECT rule_id, count(*) AS fixed FROM {schema}.applied_fixes GROUP BY rule_id) f "
        "ON f.rule_id = r.rule_id "
        "LEFT JOIN (SELECT fix_rule_id, count(*) AS fixed FROM (SELECT DISTINCT fix_rule_id, source_type, "
        "partition_key, file_hash, source_line_number, field_name FROM {schema}.data_quality_issues AS d "
        "WHERE fix_rule_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {schema}.applied_fixes a "
        "WHERE a.rule_id = d.fix_rule_id AND a.source_type = d.source_type AND a.partition_key = d.partition_key "
        "AND a.file_hash = d.file_hash AND a.source_line_number = d.source_line_number "
        "AND a.field_name = d.field_name)) AS v GROUP BY fix_rule_id) i ON i.fix_rule_id = r.rule_id "
        "ORDER BY r.rule_id"
    )
    return [RuleSummary(*row[:-1], int(row[-1])) for row in rows]


def fixed_partitions(store: Warehouse, rule_ids: Iterable[int]) -> dict[str, list[str]]:
    """Per source, the file versions with issues these rules fixed: the partitions whose
    re-materialization applies the rules to the warehouse."""
    ids = [int(rule_id) for rule_id in rule_ids]
    if not ids:
        return {}
    partitions: dict[str, list[str]] = defaultdict(list)
    for source, partition_key in store.query(
        "SELECT DISTINCT source_type, partition_key FROM {schema}.data_quality_issues "
        f"WHERE fix_rule_id IN ({', '.join(['%s'] * len(ids))}) ORDER BY 1, 2",
        ids,
    ):
        partitions[source].append(partition_key)
    return dict(partitions)


# What the record view shows of an issue beyond a listing's columns.
DETAIL_COLUMNS = (*ISSUE_COLUMNS, "rule", "resolution_notes", "resolved_at", "resolved_by", "fix_rule_id")


@dataclass(frozen=True)
class IssueRecord:
    """One issue with its record: every issue raised on the same line, and the record itself,
    from the dead letters when it was rejected, else from the source's table."""

    issue: dict[str, Any]
    issues: list[dict[str, Any]]
    record: dict[str, Any] | str | None
    origin: str


def issue_record(store: Warehouse, issue_id: str, specs: Iterable[SourceSpec] = ()) -> IssueRecord | None:
    """The issue `issue_id` with its record, or None when there is no such issue."""
    columns = f"CAST(issue_id AS VARCHAR), {', '.join(DETAIL_COLUMNS[1:])}"
    found = store.query(
        f"SELECT {columns}, source_id, file_hash FROM {{schema}}.data_quality_issues "
        "WHERE CAST(issue_id AS VARCHAR) = %s",
        [issue_id],
    )
    if not found:
        return None
    *values, source_id, file_hash = found[0]
    issue = dict(zip(DETAIL_COLUMNS, values, strict=True))
    line = issue["source_line_number"]
    if line is None:
        return IssueRecord(issue, [issue], None, "")
    siblings = store.query(
        f"SELECT {columns} FROM {{schema}}.data_quality_issues WHERE source_id = %s AND source_line_number = %s "
        "ORDER BY severity, field_name, rule",
        [source_id, line],
    )
    issues = [dict(zip(DETAIL_COLUMNS, row, strict=True)) for row in siblings]
    failed = store.query(
        "SELECT record_data FROM {schema}.failed_records WHERE source_id = %s AND source_line_number = %s LIMIT 1",
        [source_id, line],
    )
    if failed:
        try:
            return IssueRecord(issue, issues, json.loads(failed[0][0]), "failed_records")
        except json.JSONDecodeError:
            return IssueRecord(issue, issues, failed[0][0], "failed_records")
    spec = next((spec for spec in specs if spec.name == issue["source_type"]), None)
    if spec is None:
        return IssueRecord(issue, issues, None, "")
    names = [c.name for c in spec.columns]
    rows = store.query(
        f"SELECT {', '.join(quote_ident(n) for n in names)} FROM {store.table(spec.name)} "
        f"WHERE _file_hash = %s AND {quote_ident(LINE_COLUMN)} = %s LIMIT 1",
        [file_hash, line],
    )
    record = dict(zip(names, rows[0], strict=True)) if rows else None
    return IssueRecord(issue, issues, record, f"{store.schema_name}.{spec.name}" if rows else "")
