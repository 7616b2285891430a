"""Table definitions shared by every warehouse backend.

DuckDB and PostgreSQL accept the same DDL for everything the project creates, so there is
one definition of each table; backends differ only in how bulk data gets in.
"""

from __future__ import annotations

from dataclasses import dataclass

from harmonizer_dagster.core.harmonization import PROVENANCE_COLUMNS, ROW_HASH_COLUMN, WAREHOUSE_ONLY_COLUMNS
from harmonizer_dagster.core.spec import Column, SourceSpec
from harmonizer_dagster.core.sql import quote_ident

SQL_TYPES = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "uuid": "UUID",
}


def sql_type(column: Column) -> str:
    if column.type == "decimal":
        return f"DECIMAL({column.precision}, {column.scale})"
    return SQL_TYPES[column.type]


def canonical_columns(spec: SourceSpec) -> list[tuple[str, str]]:
    """(name, SQL type) of a source's warehouse table: canonical columns, then provenance."""
    columns = [(c.name, sql_type(c)) for c in spec.columns]
    columns += [(name, SQL_TYPES[kind]) for name, kind in PROVENANCE_COLUMNS.items()]
    return columns


# A source tally sums one kind of row (kind: issue, dead_letter) of one label (issue type, error
# type) and severity over a source's versions: all of them, and those still pending (issues not
# triaged, dead letters not reprocessed). What a metrics scrape reads: a few rows per source.
TALLY_COLUMNS = (
    "source_type VARCHAR NOT NULL, kind VARCHAR NOT NULL, label VARCHAR NOT NULL, severity VARCHAR NOT NULL, "
    "total BIGINT NOT NULL, pending BIGINT NOT NULL"
)
TALLY_NAMES = "source_type, kind, label, severity, total, pending"
# Migration 7's per-version tallies, from every version's rows (migration 8 replaces them).
ALL_TALLIES = [
    "SELECT source_id, source_type, 'issue', issue_type, severity, count(*), "
    "count(*) FILTER (WHERE resolution_status = 'pending') FROM {schema}.data_quality_issues "
    "GROUP BY source_id, source_type, issue_type, severity",
    "SELECT source_id, source_type, 'dead_letter', error_type, '', count(*), count(*) FILTER (WHERE NOT reprocessed) "
    "FROM {schema}.failed_records GROUP BY source_id, source_type, error_type",
]

# What each version's issues and dead letters come to, by table, for the versions that
# `{versions}` selects (a condition on source_id), counted from their rows.
VERSION_COUNTS = {
    "version_issue_counts": "SELECT source_id, source_type, issue_type, severity, field_name, rule, count(*), "
    "count(*) FILTER (WHERE resolution_status = 'pending') FROM {schema}.data_quality_issues WHERE {versions} "
    "GROUP BY source_id, source_type, issue_type, severity, field_name, rule",
    "version_dead_letter_counts": "SELECT source_id, source_type, error_type, count(*), "
    "count(*) FILTER (WHERE NOT reprocessed) FROM {schema}.failed_records WHERE {versions} "
    "GROUP BY source_id, source_type, error_type",
}
# The source tallies (TALLY_NAMES) those versions' counts add up to.
SOURCE_SUMS = [
    "SELECT source_type, 'issue', issue_type, severity, sum(issues), sum(pending) "
    "FROM {schema}.version_issue_counts WHERE {versions} GROUP BY source_type, issue_type, severity",
    "SELECT source_type, 'dead_letter', error_type, '', sum(records), sum(pending) "
    "FROM {schema}.version_dead_letter_counts WHERE {versions} GROUP BY source_type, error_type",
]


@dataclass(frozen=True)
class Indexing:
    """A migration statement only backends that keep indexes on disk run (`on_disk`: PostgreSQL),
    or only those that hold them in memory (DuckDB, which loads a table's ART indexes whole to
    write to it: the primary key of 5M issue rows alone took hundreds of MiB on every load)."""

    sql: str
    on_disk: bool


# The issue and dead-letter tables as DuckDB keeps them from migration 6 on: no primary key
# (ids are random UUIDs) and no secondary index, so writing them needs no index in memory.
_RECORDED = (
    ("source_id", "BIGINT NOT NULL"),
    ("source_type", "VARCHAR NOT NULL"),
    ("partition_key", "VARCHAR NOT NULL"),
    ("file_hash", "VARCHAR NOT NULL"),
    ("run_id", "VARCHAR"),
    ("source_line_number", "BIGINT"),
    ("source_record_id", "VARCHAR"),
)
_UNINDEXED = {
    "data_quality_issues": (
        ("issue_id", "UUID NOT NULL DEFAULT gen_random_uuid()"),
        *_RECORDED,
        ("issue_type", "VARCHAR NOT NULL"),
        ("severity", "VARCHAR NOT NULL"),
        ("field_name", "VARCHAR"),
        ("invalid_value", "VARCHAR"),
        ("expected_format", "VARCHAR"),
        ("rule", "VARCHAR"),
        ("resolution_status", "VARCHAR NOT NULL DEFAULT 'pending'"),
        ("resolution_notes", "VARCHAR"),
        ("created_at", "TIMESTAMPTZ NOT NULL DEFAULT now()"),
        ("resolved_at", "TIMESTAMPTZ"),
        ("check_name", "VARCHAR"),
        ("fix_rule_id", "BIGINT"),
        ("resolved_by", "VARCHAR"),
    ),
    "failed_records": (
        ("record_id", "UUID NOT NULL DEFAULT gen_random_uuid()"),
        *_RECORDED,
        ("record_data", "VARCHAR NOT NULL"),
        ("error_type", "VARCHAR NOT NULL"),
        ("error_message", "VARCHAR NOT NULL"),
        ("reprocessed", "BOOLEAN NOT NULL DEFAULT FALSE"),
        ("reprocessed_at", "TIMESTAMPTZ"),
        ("created_at", "TIMESTAMPTZ NOT NULL DEFAULT now()"),
    ),
}


def _rebuilt_unindexed(table: str) -> list[str | Indexing]:
    """DuckDB cannot drop a primary key: the table is copied into one without it."""
    definition = ", ".join(f"{name} {kind}" for name, kind in _UNINDEXED[table])
    columns = ", ".join(name for name, _ in _UNINDEXED[table])
    return [
        Indexing(sql, on_disk=False)
        for sql in (
            f"CREATE TABLE {{schema}}.{table}_unindexed ({definition})",
            f"INSERT INTO {{schema}}.{table}_unindexed ({columns}) SELECT {columns} FROM {{schema}}.{table}",
            f"DROP TABLE {{schema}}.{table}",
            f"ALTER TABLE {{schema}}.{table}_unindexed RENAME TO {table}",
        )
    ]


# Each migration runs once per warehouse, in order; never edit one that has shipped.
MIGRATIONS: list[tuple[int, str, list[str | Indexing]]] = [
    (
        1,
        "registry, data-quality issues and failed records",
        [
            "CREATE SEQUENCE IF NOT EXISTS {schema}.sources_source_id_seq",
            """CREATE TABLE IF NOT EXISTS {schema}.sources (
                source_id BIGINT PRIMARY KEY DEFAULT nextval('{schema_literal}.sources_source_id_seq'),
                source_type VARCHAR NOT NULL,
                source_name VARCHAR NOT NULL,
                source_version VARCHAR NOT NULL,
                partition_key VARCHAR NOT NULL,
                file_name VARCHAR NOT NULL,
                file_uri VARCHAR NOT NULL,
                file_hash VARCHAR NOT NULL,
                file_size_bytes BIGINT NOT NULL,
                status VARCHAR NOT NULL,
                records_in_file BIGINT,
                records_processed BIGINT,
                records_imported BIGINT,
                records_failed BIGINT,
                records_skipped BIGINT,
                records_inserted BIGINT,
                records_updated BIGINT,
                records_unchanged BIGINT,
                duplicate_of_source_id BIGINT,
                run_id VARCHAR,
                import_started_at TIMESTAMPTZ,
                import_completed_at TIMESTAMPTZ,
                error_message VARCHAR,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                UNIQUE (source_type, partition_key, file_hash)
            )""",
            """CREATE TABLE IF NOT EXISTS {schema}.data_quality_issues (
                issue_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
                source_id BIGINT NOT NULL,
                source_type VARCHAR NOT NULL,
                partition_key VARCHAR NOT NULL,
                file_hash VARCHAR NOT NULL,
                run_id VARCHAR,
                source_line_number BIGINT,
                source_record_id VARCHAR,
                issue_type VARCHAR NOT NULL,
                severity VARCHAR NOT NULL,
                field_name VARCHAR,
                invalid_value VARCHAR,
                expected_format VARCHAR,
                rule VARCHAR,
                resolution_status VARCHAR NOT NULL DEFAULT 'pending',
                resolution_notes VARCHAR,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                resolved_at TIMESTAMPTZ
            )""",
            """CREATE TABLE IF NOT EXISTS {schema}.failed_records (
                record_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
                source_id BIGINT NOT NULL,
                source_type VARCHAR NOT NULL,
                partition_key VARCHAR NOT NULL,
                file_hash VARCHAR NOT NULL,
                run_id VARCHAR,
                source_line_number BIGINT,
                source_record_id VARCHAR,
                record_data VARCHAR NOT NULL,
                error_type VARCHAR NOT NULL,
                error_message VARCHAR NOT NULL,
                reprocessed BOOLEAN NOT NULL DEFAULT FALSE,
                reprocessed_at TIMESTAMPTZ,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX IF NOT EXISTS dq_issues_file_idx ON {schema}.data_quality_issues (source_type, file_hash)",
            "CREATE INDEX IF NOT EXISTS failed_records_file_idx ON {schema}.failed_records (source_type, file_hash)",
        ],
    ),
    (
        2,
        "asset-check history, schema drift and publication",
        [
            """CREATE TABLE IF NOT EXISTS {schema}.data_quality_checks (
                check_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
                check_name VARCHAR NOT NULL,
                asset VARCHAR NOT NULL,
                partition_key VARCHAR NOT NULL,
                source_id BIGINT,
                file_hash VARCHAR,
                severity VARCHAR NOT NULL,
                passed BOOLEAN NOT NULL,
                observed_value DOUBLE PRECISION,
                threshold DOUBLE PRECISION,
                counts VARCHAR NOT NULL,
                message VARCHAR NOT NULL,
                run_id VARCHAR,
                evaluated_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX IF NOT EXISTS dq_checks_asset_idx ON {schema}.data_quality_checks (asset, partition_key)",
            "ALTER TABLE {schema}.sources ADD COLUMN extra_fields VARCHAR",
            "ALTER TABLE {schema}.sources ADD COLUMN published_at TIMESTAMPTZ",
            "ALTER TABLE {schema}.data_quality_issues ADD COLUMN check_name VARCHAR",
        ],
    ),
    (
        3,
        "learned transformation rules and the fixes they applied",
        [
            "CREATE SEQUENCE IF NOT EXISTS {schema}.transformation_rules_rule_id_seq",
            """CREATE TABLE IF NOT EXISTS {schema}.transformation_rules (
                rule_id BIGINT PRIMARY KEY DEFAULT nextval('{schema_literal}.transformation_rules_rule_id_seq'),
                source_type VARCHAR NOT NULL,
                field_name VARCHAR NOT NULL,
                kind VARCHAR NOT NULL,
                params VARCHAR NOT NULL,
                enabled BOOLEAN NOT NULL DEFAULT TRUE,
                note VARCHAR,
                created_from_issue_type VARCHAR,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                disabled_at TIMESTAMPTZ
            )""",
            """CREATE TABLE IF NOT EXISTS {schema}.applied_fixes (
                source_id BIGINT NOT NULL,
                rule_id BIGINT NOT NULL,
                source_type VARCHAR NOT NULL,
                partition_key VARCHAR NOT NULL,
                file_hash VARCHAR NOT NULL,
                run_id VARCHAR,
                source_line_number BIGINT,
                field_name VARCHAR NOT NULL,
                old_value VARCHAR,
                new_value VARCHAR,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            "ALTER TABLE {schema}.data_quality_issues ADD COLUMN fix_rule_id BIGINT",
            "ALTER TABLE {schema}.sources ADD COLUMN processing_fingerprint VARCHAR",
        ],
    ),
    (
        4,
        "who triaged an issue",
        ["ALTER TABLE {schema}.data_quality_issues ADD COLUMN resolved_by VARCHAR"],
    ),
    (
        5,
        "one transformation rule per source, field, kind and parameters",
        # Identical rules merge into the oldest, which keeps their fixes and issues and stays
        # enabled if any of them was. The table is rebuilt rather than deduplicated in place:
        # DuckDB cannot build a unique index over rows deleted in the same transaction.
        [
            """UPDATE {schema}.data_quality_issues AS i SET fix_rule_id = m.keep FROM (
                SELECT rule_id, min(rule_id) OVER (PARTITION BY source_type, field_name, kind, params) AS keep
                FROM {schema}.transformation_rules) AS m WHERE i.fix_rule_id = m.rule_id AND m.rule_id <> m.keep""",
            """UPDATE {schema}.applied_fixes AS f SET rule_id = m.keep FROM (
                SELECT rule_id, min(rule_id) OVER (PARTITION BY source_type, field_name, kind, params) AS keep
                FROM {schema}.transformation_rules) AS m WHERE f.rule_id = m.rule_id AND m.rule_id <> m.keep""",
            """CREATE TABLE {schema}.transformation_rules_merged (
                rule_id BIGINT PRIMARY KEY DEFAULT nextval('{schema_literal}.transformation_rules_rule_id_seq'),
                source_type VARCHAR NOT NULL,
                field_name VARCHAR NOT NULL,
                kind VARCHAR NOT NULL,
                params VARCHAR NOT NULL,
                enabled BOOLEAN NOT NULL DEFAULT TRUE,
                note VARCHAR,
                created_from_issue_type VARCHAR,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                disabled_at TIMESTAMPTZ
            )""",
            """INSERT INTO {schema}.transformation_rules_merged SELECT r.rule_id, r.source_type, r.field_name, r.kind,
                r.params, g.enabled, r.note, r.created_from_issue_type, r.created_at,
                CASE WHEN g.enabled THEN NULL ELSE g.disabled_at END
                FROM {schema}.transformation_rules AS r JOIN (
                    SELECT min(rule_id) AS keep, bool_or(enabled) AS enabled, max(disabled_at) AS disabled_at
                    FROM {schema}.transformation_rules GROUP BY source_type, field_name, kind, params
                ) AS g ON r.rule_id = g.keep""",
            "DROP TABLE {schema}.transformation_rules",
            "ALTER TABLE {schema}.transformation_rules_merged RENAME TO transformation_rules",
            "CREATE UNIQUE INDEX transformation_rules_identity_idx "
            "ON {schema}.transformation_rules (source_type, field_name, kind, params)",
        ],
    ),
    (
        6,
        "issue counts kept per version; issues and dead letters found by version",
        # What checks, reports and baselines read instead of the issues: a few rows a version
        # (one per issue type, severity, field and rule), written in the publish transaction and
        # recounted when triage changes a version's issues.
        [
            """CREATE TABLE {schema}.version_issue_counts (
                source_id BIGINT NOT NULL,
                source_type VARCHAR NOT NULL,
                issue_type VARCHAR NOT NULL,
                severity VARCHAR NOT NULL,
                field_name VARCHAR,
                rule VARCHAR,
                issues BIGINT NOT NULL,
                pending BIGINT NOT NULL
            )""",
            "INSERT INTO {schema}.version_issue_counts "
            + VERSION_COUNTS["version_issue_counts"].replace("{versions}", "TRUE"),
            Indexing("CREATE INDEX version_issue_counts_source_idx ON {schema}.version_issue_counts (source_id)", True),
            Indexing("CREATE INDEX applied_fixes_source_idx ON {schema}.applied_fixes (source_id)", True),
            Indexing("CREATE INDEX dq_checks_source_idx ON {schema}.data_quality_checks (source_id)", True),
            # Versions' issues are replaced by id now: this index only slowed every issue written
            # (PostgreSQL, 1M issues: 14.0 s to insert with it, 10.3 s without).
            "DROP INDEX IF EXISTS {schema}.dq_issues_file_idx",
            *_rebuilt_unindexed("data_quality_issues"),
            *_rebuilt_unindexed("failed_records"),
        ],
    ),
    (
        7,
        "live progress, issue and dead-letter tallies, and the loader_status view",
        [
            "ALTER TABLE {schema}.sources ADD COLUMN heartbeat_at TIMESTAMPTZ",
            "ALTER TABLE {schema}.sources ADD COLUMN records_expected BIGINT",
            "CREATE INDEX IF NOT EXISTS sources_status_idx ON {schema}.sources (status)",
            "CREATE INDEX IF NOT EXISTS dq_issues_source_idx ON {schema}.data_quality_issues (source_id)",
            "CREATE INDEX IF NOT EXISTS failed_records_source_idx ON {schema}.failed_records (source_id)",
            # What each version's issues and dead letters come to, and their sums per source:
            # a scrape reads a few rows per source instead of counting millions of issues.
            f"CREATE TABLE IF NOT EXISTS {{schema}}.version_tallies ({TALLY_COLUMNS}, source_id BIGINT NOT NULL, "
            "PRIMARY KEY (source_id, kind, label, severity))",
            f"CREATE TABLE IF NOT EXISTS {{schema}}.source_tallies ({TALLY_COLUMNS}, "
            "PRIMARY KEY (source_type, kind, label, severity))",
            *(f"INSERT INTO {{schema}}.version_tallies (source_id, {TALLY_NAMES}) {tally}" for tally in ALL_TALLIES),
            f"INSERT INTO {{schema}}.source_tallies ({TALLY_NAMES}) SELECT source_type, kind, label, severity, "
            "sum(total), sum(pending) FROM {schema}.version_tallies GROUP BY source_type, kind, label, severity",
            # The stall threshold the views apply: migrate keeps it at HARMONIZER_STALL_MINUTES.
            "CREATE TABLE IF NOT EXISTS {schema}.loader_settings (stall_seconds DOUBLE PRECISION NOT NULL)",
            "INSERT INTO {schema}.loader_settings VALUES (1800)",
            """CREATE VIEW {schema}.version_health AS SELECT s.*, CASE
                WHEN s.status = 'processing' AND extract(epoch FROM now()
                    - coalesce(s.heartbeat_at, s.import_started_at, s.updated_at)) > c.stall_seconds THEN 'STALLED'
                ELSE s.status END AS health_status
                FROM {schema}.sources s CROSS JOIN {schema}.loader_settings c""",
            # The legacy view's columns and window, over every backend.
            """CREATE VIEW {schema}.loader_status AS SELECT source_id, source_type, source_name, source_version,
                partition_key, status, import_started_at, import_completed_at, records_processed,
                records_expected, records_imported, records_failed, heartbeat_at, health_status,
                CASE WHEN import_completed_at > import_started_at THEN records_imported * 60.0
                    / extract(epoch FROM import_completed_at - import_started_at) END AS records_per_minute
                FROM {schema}.version_health
                WHERE coalesce(import_started_at, updated_at) > now() - INTERVAL '7 days'
                ORDER BY coalesce(import_started_at, updated_at) DESC, source_id DESC""",
        ],
    ),
    (
        8,
        "dead letters counted per version apart; no in-memory index on the issue and dead-letter tables",
        [
            # One count per version of its issues: version_issue_counts (migration 6), which the
            # source tallies now sum. Dead letters get counts of their own, as migration 7 tallied them.
            """CREATE TABLE {schema}.version_dead_letter_counts (
                source_id BIGINT NOT NULL,
                source_type VARCHAR NOT NULL,
                error_type VARCHAR NOT NULL,
                records BIGINT NOT NULL,
                pending BIGINT NOT NULL
            )""",
            "INSERT INTO {schema}.version_dead_letter_counts SELECT source_id, source_type, label, total, pending "
            "FROM {schema}.version_tallies WHERE kind = 'dead_letter'",
            "DROP TABLE {schema}.version_tallies",
            Indexing(
                "CREATE INDEX version_dead_letter_counts_source_idx ON {schema}.version_dead_letter_counts (source_id)",
                on_disk=True,
            ),
            # Migration 7 indexed the issue and dead-letter tables' source ids on every backend;
            # DuckDB keeps those tables index-free (migration 6), PostgreSQL keeps the indexes.
            Indexing("DROP INDEX IF EXISTS {schema}.dq_issues_source_idx", on_disk=False),
            Indexing("DROP INDEX IF EXISTS {schema}.failed_records_source_idx", on_disk=False),
        ],
    ),
    (
        9,
        "write-audit-publish: staged versions, held versions and the decisions taken on them",
        [
            # Why a version is held: the blocking checks it failed (its status is then 'held').
            "ALTER TABLE {schema}.sources ADD COLUMN held_because VARCHAR",
            # Who released or discarded a held version, when and why: the steward's audit trail.
            """CREATE TABLE {schema}.version_decisions (
                source_id BIGINT NOT NULL,
                source_type VARCHAR NOT NULL,
                partition_key VARCHAR NOT NULL,
                decision VARCHAR NOT NULL,
                decided_by VARCHAR NOT NULL,
                reason VARCHAR NOT NULL,
                decided_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
        ],
    ),
    (
        10,
        "API keys, and the files handed in over HTTP with the key that handed each in",
        [
            # Only a key's SHA-256 is kept: the token itself is shown once, when it is made.
            """CREATE TABLE {schema}.api_keys (
                name VARCHAR PRIMARY KEY,
                key_sha256 VARCHAR NOT NULL UNIQUE,
                scopes VARCHAR NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                revoked_at TIMESTAMPTZ
            )""",
            # A file handed in, before the registry knows it (a sensor has not seen it yet) and
            # after: its version is the registry row of the same source, partition and hash.
            """CREATE TABLE {schema}.api_uploads (
                upload_id VARCHAR PRIMARY KEY,
                source_type VARCHAR NOT NULL,
                partition_key VARCHAR NOT NULL,
                file_hash VARCHAR NOT NULL,
                file_size_bytes BIGINT NOT NULL,
                source_version VARCHAR NOT NULL,
                uploaded_by VARCHAR NOT NULL,
                run_id VARCHAR,
                uploaded_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
        ],
    ),
    (
        11,
        "sinks: which rows a publish updated, and how far each version got into each sink",
        [
            # The lines of a version whose rows replaced a published row (the rest it wrote are
            # new keys): written by a publish of a source with sinks, read by its sinks.
            """CREATE TABLE {schema}.published_updates (
                source_id BIGINT NOT NULL,
                source_line_number BIGINT NOT NULL
            )""",
            # A sink looks each of a version's rows up here: PostgreSQL, its statistics not yet
            # updated after a large load, may join by nested loop, which this index keeps a lookup.
            Indexing(
                "CREATE INDEX published_updates_line_idx ON {schema}.published_updates (source_id, source_line_number)",
                True,
            ),
            # Per version and sink: the changes it has to produce, those acknowledged up to the
            # checkpoint (in line order: `line` is the last of them), dead letters, and its state.
            """CREATE TABLE {schema}.sink_checkpoints (
                source_id BIGINT NOT NULL,
                sink VARCHAR NOT NULL,
                source_type VARCHAR NOT NULL,
                partition_key VARCHAR NOT NULL,
                changes BIGINT NOT NULL,
                produced BIGINT NOT NULL,
                line BIGINT NOT NULL,
                dead_letters BIGINT NOT NULL,
                status VARCHAR NOT NULL,
                error_message VARCHAR,
                run_id VARCHAR,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (source_id, sink)
            )""",
        ],
    ),
]


def version_index_ddl(schema: str, table: str) -> str:
    """The index that finds the rows one file version wrote in a source table (PostgreSQL):
    checks read those rows only, whatever the table holds."""
    return (
        f"CREATE INDEX IF NOT EXISTS {quote_ident(table + '_file_hash_idx')} "
        f"ON {schema}.{quote_ident(table)} (_file_hash)"
    )


def source_table_ddl(schema: str, spec: SourceSpec, *, primary_key: bool) -> str:
    """A source's table. Natural-key columns are NOT NULL everywhere; the primary-key index is
    left out where the backend keeps it in memory (DuckDB), and uniqueness then rests on the
    upsert, which inserts only keys the table does not hold yet."""
    columns = ", ".join(
        f"{quote_ident(name)} {kind}" + (" NOT NULL" if name in spec.natural_key else "")
        for name, kind in canonical_columns(spec)
    )
    key = ", ".join(quote_ident(k) for k in spec.natural_key)
    constraint = f", PRIMARY KEY ({key})" if primary_key else ""
    return f"CREATE TABLE IF NOT EXISTS {schema}.{quote_ident(spec.name)} ({columns}{constraint})"


def stage_schema(schema: str) -> str:
    """The schema that holds staged versions, beside the one consumers read."""
    return f"{schema}_stage"


def stage_table_ddl(schema: str, spec: SourceSpec) -> str:
    """A source's stage: the canonical rows of versions written and audited but not published,
    each row tagged with its version's `_source_id`. Keys are NOT NULL, as in the source's
    table; no key constraint, since several versions of one key may wait here at once."""
    columns = ", ".join(
        f"{quote_ident(name)} {kind}" + (" NOT NULL" if name in spec.natural_key else "")
        for name, kind in staged_columns(spec)
    )
    return f"CREATE TABLE IF NOT EXISTS {schema}.{quote_ident(spec.name)} (_source_id BIGINT NOT NULL, {columns})"


def staged_columns(spec: SourceSpec) -> list[tuple[str, str]]:
    """The columns a version's staged rows carry: the canonical ones and what the file gives
    them (line, row hash); the warehouse stamps the rest when it publishes."""
    return [c for c in canonical_columns(spec) if c[0] not in WAREHOUSE_ONLY_COLUMNS]


def replaced_row(arrival: int) -> str:
    """When a published row `t` is replaced by a staged row `s` of the same key: its content
    changed, and no file that arrived after the staged version's (`arrival`) wrote it."""
    return f"t.{ROW_HASH_COLUMN} <> s.{ROW_HASH_COLUMN} AND coalesce(t._arrival, 0) <= {int(arrival)}"
