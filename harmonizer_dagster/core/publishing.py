"""Audit and publish: the end of write-audit-publish for one staged file version.

A version is written to the warehouse's stage (`pipeline.stage_step`); `audit` evaluates its
checks there and holds it when a blocking check fails; `publish` moves a version that passed
into the table consumers read. A held version waits for a data steward: `release` publishes it
as it is, `discard` drops it, each recorded with who and why. Nothing here knows about Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harmonizer_dagster.core.quality import Evaluation, QualityCheck, checks_for, judge_version
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.sql import quote_ident
from harmonizer_dagster.core.warehouse import Warehouse
from harmonizer_dagster.core.warehouse.tables import replaced_row


class HeldVersion(Exception):
    """A version its blocking checks held: only a steward's release publishes it."""


@dataclass(frozen=True)
class Audit:
    """A version's checks, evaluated on its staged rows, and what they decided: `held` when a
    blocking check failed on a version waiting to be published."""

    partition_key: str
    evaluated: list[tuple[QualityCheck, Evaluation]]
    held: bool = False

    @property
    def blocking_failures(self) -> list[str]:
        return [check.name for check, e in self.evaluated if check.severity == "error" and not e.passed]


def audit(store: Warehouse, spec: SourceSpec, partition_key: str, run_id: str, source_id: int | None = None) -> Audit:
    """Evaluates every check of the version `source_id` (default: the partition's latest) and
    records them; a staged version failing a blocking check is held, so no publish can reach
    the table consumers read. A version published already is only judged again."""
    evaluated, version = judge_version(store, spec, checks_for(spec), partition_key, run_id, source_id)
    result = Audit(partition_key, evaluated)
    if result.blocking_failures and version is not None and version.status in ("staged", "held"):
        store.hold_version(version.source_id, result.blocking_failures)
        return Audit(partition_key, evaluated, held=True)
    return result


@dataclass(frozen=True)
class Publication:
    source_id: int
    file_hash: str
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def publish(
    store: Warehouse, spec: SourceSpec, partition_key: str, run_id: str, source_id: int | None = None
) -> Publication:
    """Publishes the version `source_id` (default: the partition's latest) unless it is held. A
    version published already, or identical to a published one, is marked so again: publishing
    is idempotent. The lookup is a transaction of its own: the publish checks again, under the
    source's lock, that the version is still staged."""
    version = _version(store, spec.name, partition_key, source_id)
    if version is None:
        raise ValueError(f"{partition_key} has no load to publish")
    source_id, file_hash, status, held_because = version
    if status == "held":
        raise HeldVersion(
            f"{partition_key} is held: blocking check(s) failed: {held_because}; "
            "a data steward can release or discard it"
        )
    if status == "discarded":
        raise HeldVersion(f"{partition_key} was discarded by a data steward")
    if status == "staged":
        counts = store.publish(spec, source_id, run_id)
        return Publication(source_id, file_hash, counts.inserted, counts.updated, counts.unchanged)
    published = store.mark_published(source_id)
    if published is None:
        raise ValueError(f"{partition_key} has no load to publish ({status})")
    return Publication(*published)


def _version(
    store: Warehouse, source_type: str, partition_key: str, source_id: int | None
) -> tuple[int, str, str, str | None] | None:
    """A version's id, hash, status and failed checks: `source_id`'s, or the partition's latest."""
    if source_id is not None:
        rows = store.query(
            "SELECT source_id, file_hash, status, held_because FROM {schema}.sources WHERE source_id = %s",
            (source_id,),
        )
    else:
        rows = store.query(
            "SELECT source_id, file_hash, status, held_because FROM {schema}.sources WHERE source_type = %s "
            "AND partition_key = %s AND status IN ('completed', 'skipped', 'staged', 'held', 'discarded') "
            "ORDER BY source_id DESC LIMIT 1",
            (source_type, partition_key),
        )
    return (int(rows[0][0]), str(rows[0][1]), str(rows[0][2]), rows[0][3]) if rows else None


@dataclass(frozen=True)
class Held:
    """A held version as a steward sees it."""

    source_id: int
    source: str
    partition_key: str
    file_name: str
    held_because: str
    records_in_file: int
    records_failed: int
    new_keys: int
    changed_rows: int
    staged_at: Any


def held_versions(store: Warehouse, source: str | None = None, source_id: int | None = None) -> list[Held]:
    """The versions waiting for a steward's decision (of one source, or the one version), oldest first."""
    where, params = "", []
    for column, value in (("source_type", source), ("source_id", source_id)):
        if value is not None:
            where, params = f"{where} AND {column} = %s", [*params, value]
    rows = store.query(
        "SELECT source_id, source_type, partition_key, file_name, coalesce(held_because, ''), "
        "coalesce(records_in_file, 0), coalesce(records_failed, 0), coalesce(records_inserted, 0), "
        "coalesce(records_updated, 0), import_completed_at FROM {schema}.sources "
        f"WHERE status = 'held'{where} ORDER BY source_id",
        params,
    )
    return [Held(*row) for row in rows]


def release(store: Warehouse, spec: SourceSpec, source_id: int, by: str, reason: str, run_id: str = "") -> Publication:
    """Publishes a held version as it is, recording who released it and why. Keys a version
    that arrived later wrote keep that version's values: a release never moves a key back."""
    _require_decision(by, reason)
    with store.transaction():
        partition_key, file_hash = _held(store, spec, source_id)
        counts = store.publish(spec, source_id, run_id or f"released by {by}", released=True)
        store.record_decision(source_id, spec.name, partition_key, "released", by, reason)
    return Publication(source_id, file_hash, counts.inserted, counts.updated, counts.unchanged)


def discard(store: Warehouse, spec: SourceSpec, source_id: int, by: str, reason: str) -> str:
    """Drops a held version's staged rows for good, recording who discarded it and why; its
    issues stay in the data-quality table as the record of what was wrong. Returns its partition."""
    _require_decision(by, reason)
    with store.transaction():
        partition_key, _ = _held(store, spec, source_id)
        store.discard(spec, source_id)
        store.record_decision(source_id, spec.name, partition_key, "discarded", by, reason)
    return partition_key


def _require_decision(by: str, reason: str) -> None:
    if not by.strip() or not reason.strip():
        raise ValueError("a release or discard needs who decides and why")


def _held(store: Warehouse, spec: SourceSpec, source_id: int) -> tuple[str, str]:
    rows = store.query(
        "SELECT partition_key, file_hash, status FROM {schema}.sources WHERE source_id = %s AND source_type = %s",
        (source_id, spec.name),
    )
    if not rows:
        raise ValueError(f"{spec.name} has no version {source_id}")
    if rows[0][2] != "held":
        raise ValueError(f"{spec.name} version {source_id} is {rows[0][2]}, not held")
    return str(rows[0][0]), str(rows[0][1])


@dataclass(frozen=True)
class FailedCheck:
    """A check whose latest evaluation of a version failed: what a steward weighs before deciding."""

    check_name: str
    severity: str
    message: str
    evaluated_at: Any


def failed_checks(store: Warehouse, source_id: int) -> list[FailedCheck]:
    """The checks whose latest evaluation of the version failed, blocking ones first: an audit
    run again on the same version replaces what the earlier one said."""
    rows = store.query(
        "SELECT check_name, severity, message, evaluated_at FROM (SELECT check_name, severity, passed, message, "
        "evaluated_at, row_number() OVER (PARTITION BY check_name ORDER BY evaluated_at DESC) AS recency "
        "FROM {schema}.data_quality_checks WHERE source_id = %s) AS c WHERE recency = 1 AND NOT passed "
        "ORDER BY severity <> 'error', check_name",
        (source_id,),
    )
    return [FailedCheck(*row) for row in rows]


@dataclass(frozen=True)
class PendingChange:
    """One row a held version would write: a new key, or a changed row with each value before and after."""

    key: dict[str, Any]
    kind: str  # "new" or "changed"
    changes: dict[str, tuple[Any, Any]]


def pending_changes(
    store: Warehouse, spec: SourceSpec, source_id: int, page: int = 1, limit: int = 50
) -> tuple[list[PendingChange], int]:
    """What publishing a staged or held version would change in the table consumers read, one
    page of it (new keys, then changed rows, in key order), and how many rows in all."""
    if page < 1 or limit < 1:
        raise ValueError("page and limit must be at least 1")
    keys = [quote_ident(k) for k in spec.natural_key]
    # The values a consumer reads: every canonical column but the key and the provenance.
    names = [c.name for c in spec.columns if c.name not in spec.natural_key]
    values = [quote_ident(name) for name in names]
    joined = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    arrival = store.query(
        "SELECT min(a.source_id) FROM {schema}.sources a JOIN {schema}.sources v ON a.source_type = v.source_type "
        "AND a.partition_key = v.partition_key WHERE v.source_id = %s",
        (source_id,),
    )[0][0]
    relation = (
        f"FROM {store.stage_table(spec.name)} s LEFT JOIN {store.table(spec.name)} t ON {joined} "
        f"WHERE s._source_id = {int(source_id)} AND (t.{keys[0]} IS NULL OR ({replaced_row(arrival or 0)}))"
    )
    total = int(store.query(f"SELECT count(*) {relation}")[0][0])
    selected = ", ".join([*(f"s.{k}" for k in keys), f"t.{keys[0]} IS NULL", *(f"t.{v}, s.{v}" for v in values)])
    order = ", ".join([f"t.{keys[0]} IS NULL DESC", *(f"s.{k}" for k in keys)])
    rows = store.query(f"SELECT {selected} {relation} ORDER BY {order} LIMIT %s OFFSET %s", (limit, (page - 1) * limit))
    changes = []
    for row in rows:
        key = dict(zip(spec.natural_key, row[: len(keys)], strict=True))
        new = bool(row[len(keys)])
        pairs = row[len(keys) + 1 :]
        before_after = {name: (pairs[2 * i], pairs[2 * i + 1]) for i, name in enumerate(names)}
        changed = {n: ba for n, ba in before_after.items() if new or ba[0] != ba[1]}
        changes.append(PendingChange(key, "new" if new else "changed", changed))
    return changes, total
