"""Triage of data-quality issues: the legacy dashboard's views and actions, as functions.

Actions: `resolve` (with a note), `ignore` (accepted variance), `auto_fix` (create a rule
that fixes such values on every later load) and `manual_fix` (a corrected value for the
selected value, kept as a rule too, so the fix survives reloads and reaches the DLQ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harmonizer_dagster.core.warehouse import Warehouse

ACTIONS = {"resolve": "resolved", "ignore": "ignored", "auto_fix": "auto_fix", "manual_fix": "manual_fix"}


@dataclass(frozen=True)
class Selection:
    """Which issues an action applies to; every given criterion must hold."""

    issue_ids: tuple[str, ...] = ()
    issue_type: str | None = None
    source: str | None = None
    partition_key: str | None = None
    field_name: str | None = None
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
    """Issues grouped by source, type and severity, largest first, with a few examples."""
    where, params = selection.where()
    groups = store.query(
        "SELECT source_type, issue_type, severity, count(*) FROM {schema}.data_quality_issues "
        f"WHERE {where} GROUP BY source_type, issue_type, severity ORDER BY count(*) DESC, issue_type",
        params,
    )
    result = []
    for source, issue_type, severity, count in groups:
        sample = store.query(
            "SELECT source_record_id, invalid_value, expected_format FROM {schema}.data_quality_issues "
            f"WHERE {where} AND source_type = %s AND issue_type = %s AND severity = %s "
            "ORDER BY source_line_number LIMIT %s",
            [*params, source, issue_type, severity, examples],
        )
        result.append(IssueGroup(source, issue_type, severity, int(count), [tuple(r) for r in sample]))
    return result


def render(groups: list[IssueGroup]) -> str:
    """The legacy triage dashboard, as text."""
    total = sum(g.count for g in groups)
    lines = [f"Data Quality Issues ({total} selected)", ""]
    for group in groups:
        mark = "ERROR" if group.severity == "error" else "warn "
        lines.append(f"{mark} {group.source}: {group.issue_type} ({group.count} issues)")
        for record, value, expected in group.examples:
            lines.append(f"      {record or '-'}: {value!r} -> expected {expected}")
    return "\n".join(lines)


def act(
    store: Warehouse,
    selection: Selection,
    action: str,
    note: str = "",
    *,
    pad_to_width: int | None = None,
    date_format: str | None = None,
    map_to: str | None = None,
) -> dict[str, Any]:
    """Applies a triage action to the selected issues; returns what changed.

    auto_fix needs one of pad_to_width, date_format or map_to (map_to maps every selected
    invalid value to it); manual_fix needs map_to, the corrected value."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    where, params = selection.where()
    rule_ids: list[int] = []
    if action in ("auto_fix", "manual_fix"):
        if action == "manual_fix" and map_to is None:
            raise ValueError("manual_fix needs the corrected value")
        if sum(x is not None for x in (pad_to_width, date_format, map_to)) != 1:
            raise ValueError("auto_fix needs exactly one of pad_to_width, date_format, map_to")
        targets = store.query(
            "SELECT DISTINCT source_type, field_name, issue_type, invalid_value FROM {schema}.data_quality_issues "
            f"WHERE {where} AND field_name IS NOT NULL ORDER BY 1, 2, 4",
            params,
        )
        if not targets:
            return {"issues": 0, "rules": []}
        if map_to is not None:
            for source, field_name, issue_type, value in targets:
                rule_ids.append(
                    store.add_rule(
                        source, field_name, "map_value", {"from": (value or "").strip(), "to": map_to}, note, issue_type
                    )
                )
        else:
            kind, rule_params = (
                ("pad_left", {"width": pad_to_width, "fill": "0"})
                if pad_to_width
                else ("date_format", {"format": date_format})
            )
            for source, field_name, issue_type in sorted({(s, f, t) for s, f, t, _ in targets}):
                rule_ids.append(store.add_rule(source, field_name, kind, rule_params, note, issue_type))
    changed = store.query(
        "UPDATE {schema}.data_quality_issues SET resolution_status = %s, resolution_notes = %s, "
        f"resolved_at = now(), fix_rule_id = %s WHERE {where} RETURNING issue_id",
        [ACTIONS[action], note or None, rule_ids[0] if len(rule_ids) == 1 else None, *params],
    )
    return {"issues": len(changed), "rules": rule_ids}
