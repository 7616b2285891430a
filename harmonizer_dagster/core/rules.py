"""Learned transformation rules: fixes people approved during triage, applied to raw values
before validation on every later load, each application recorded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from harmonizer_dagster.core.reading import LINE_COLUMN

KINDS = ("pad_left", "map_value", "date_format")
FIX_SCHEMA = {
    "rule_id": pl.Int64,
    "source_line_number": pl.Int64,
    "field_name": pl.Utf8,
    "old_value": pl.Utf8,
    "new_value": pl.Utf8,
}


@dataclass(frozen=True)
class Rule:
    """pad_left {width, fill}: all-digit values shorter than width are left-padded.
    map_value {from, to}: a value (compared trimmed) is replaced.
    date_format {format}: a date in this strptime format is rewritten as ISO (YYYY-MM-DD)."""

    rule_id: int
    field_name: str
    kind: str
    params: dict[str, Any]

    def expression(self, value: pl.Expr) -> pl.Expr:
        trimmed = value.str.strip_chars()
        if self.kind == "pad_left":
            width = int(self.params["width"])
            applies = trimmed.str.contains(r"^\d+$") & (trimmed.str.len_chars() < width)
            return (
                pl.when(applies).then(trimmed.str.pad_start(width, str(self.params.get("fill", "0")))).otherwise(value)
            )
        if self.kind == "map_value":
            return pl.when(trimmed == str(self.params["from"])).then(pl.lit(str(self.params["to"]))).otherwise(value)
        if self.kind == "date_format":
            parsed = trimmed.str.strptime(pl.Date, str(self.params["format"]), strict=False, exact=True)
            return pl.when(parsed.is_not_null()).then(parsed.dt.strftime("%Y-%m-%d")).otherwise(value)
        raise ValueError(f"unknown rule kind {self.kind}")


def canonical_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """The rule's parameters in the one form a rule is stored and compared in (a width is a
    number, texts are texts, pad_left's fill defaults to "0"): two rules that change values
    alike are the same rule, however they were asked for."""
    required = {"pad_left": ("width",), "map_value": ("from", "to"), "date_format": ("format",)}
    if kind not in required:
        raise ValueError(f"rule kind must be one of {', '.join(KINDS)}")
    missing = [p for p in required[kind] if p not in params]
    if missing:
        raise ValueError(f"a {kind} rule needs {', '.join(missing)}")
    if kind == "pad_left":
        return {"width": int(params["width"]), "fill": str(params.get("fill", "0"))}
    return {name: str(params[name]) for name in required[kind]}


def fingerprint(rules: list[Rule], spec_text: str) -> str:
    """Identifies what a load's output depends on besides the file: spec and active rules.
    A completed file is loaded again when this changes (say, after a new rule)."""
    payload = json.dumps([spec_text, [(r.rule_id, r.field_name, r.kind, r.params) for r in rules]], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def apply_rules(frame: pl.DataFrame, rules: list[Rule]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Applies the rules in order; returns the fixed frame and one row per changed value."""
    fixes = []
    for rule in rules:
        if rule.field_name not in frame.columns:
            continue
        fixed = rule.expression(pl.col(rule.field_name))
        changed = frame.select(
            pl.col(LINE_COLUMN).alias("source_line_number"),
            pl.col(rule.field_name).alias("old_value"),
            fixed.alias("new_value"),
        ).filter(pl.col("old_value").ne_missing(pl.col("new_value")))
        if changed.height:
            fixes.append(
                changed.with_columns(pl.lit(rule.rule_id).alias("rule_id"), pl.lit(rule.field_name).alias("field_name"))
            )
            frame = frame.with_columns(fixed.alias(rule.field_name))
    applied = pl.concat(fixes).select(list(FIX_SCHEMA)).cast(FIX_SCHEMA) if fixes else pl.DataFrame(schema=FIX_SCHEMA)
    return frame, applied
