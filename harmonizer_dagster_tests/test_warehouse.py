"""Upsert, registry and data-quality semantics, identical on every warehouse backend."""

import json
import shutil
import threading

import polars as pl
import pytest

from harmonizer_dagster.core.files import locate
from harmonizer_dagster.core.pipeline import deduplicate_step, hash_step, validate_step
from harmonizer_dagster.core.samples import REGISTRY_HEADER
from harmonizer_dagster.core.spec import parse_spec
from harmonizer_dagster.core.warehouse import open_warehouse
from harmonizer_dagster.core.warehouse.tables import MIGRATIONS
from harmonizer_dagster_tests.conftest import csv_spec, load_file, warehouse_url, write_audit_publish

Q3 = "registry_2026-Q3.csv"


def count(store, table, where="TRUE", params=()):
    return store.query(f"SELECT count(*) FROM {{schema}}.{table} WHERE {where}", params)[0][0]


def test_migrations_are_idempotent_and_extend_tables(warehouse, specs):
    warehouse.migrate(list(specs.values()))
    warehouse.migrate(list(specs.values()))
    assert warehouse.query("SELECT version FROM {schema}.schema_migrations ORDER BY 1") == [
        (version,) for version, _, _ in MIGRATIONS
    ]
    spec = specs["news_articles"]
    grown = parse_spec(
        {
            "name": spec.name,
            "owner": "o",
            "format": "json",
            "natural_key": ["article_id"],
            "columns": {"article_id": {"source": "id"}, "sentiment": {"type": "decimal"}},
        }
    )
    warehouse.migrate([grown])
    columns = {
        row[0]
        for row in warehouse.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (warehouse.schema_name, spec.name),
        )
    }
    assert {"headline", "sentiment", "_row_hash", "_loaded_at"} <= columns


def test_shipped_samples_load_with_the_manifest_counts(warehouse, specs, landing, tmp_path):
    manifest = json.loads((landing / "manifest.json").read_text())
    for source, files in manifest.items():
        for key in sorted(files):
            result = load_file(specs[source], landing, key, warehouse, tmp_path / "staging")
            expected = {k: v for k, v in files[key].items() if k != "defects"}
            assert {k: result.as_counts()[k] for k in expected} == expected, f"{source}/{key}"
    registry = manifest["business_registry"]
    assert count(warehouse, "business_registry") == sum(f["records_inserted"] for f in registry.values())
    # Registry, issues and failed records agree with the counts.
    rows = warehouse.query(
        "SELECT partition_key, status, records_in_file, records_imported + records_failed + records_skipped "
        "FROM {schema}.sources WHERE source_type = 'business_registry' ORDER BY partition_key"
    )
    assert [(r[0], r[1]) for r in rows] == [(Q3, "completed"), ("registry_2026-Q4.csv.gz", "completed")]
    assert all(r[2] == r[3] for r in rows), "rows in file = imported + failed + skipped"
    q3 = registry[Q3]
    assert count(warehouse, "failed_records", "partition_key = %s", (Q3,)) == q3["records_failed"]
    assert (
        count(warehouse, "data_quality_issues", "partition_key = %s AND severity = 'warning'", (Q3,)) == q3["warnings"]
    )
    assert (
        count(
            warehouse,
            "data_quality_issues",
            "issue_type = 'invalid_zip_code' AND severity = 'warning' AND partition_key = %s",
            (Q3,),
        )
        == q3["defects"]["zip_4_digits"]
    )
    assert (
        count(warehouse, "data_quality_issues", "issue_type = 'duplicate_key' AND partition_key = %s", (Q3,))
        == q3["defects"]["duplicate_key"]
    )
    # Harmonized values landed: zips padded, e-mails lower case, names trimmed.
    assert count(warehouse, "business_registry", "length(home_office_zip) <> 5") == 0
    assert count(warehouse, "business_registry", "email <> lower(email) OR legal_name <> trim(legal_name)") == 0
    assert count(warehouse, "business_registry", "status = 'REVOKED'") == 0, "the later occurrence of a key wins"


def test_same_file_twice_is_skipped_without_writes(warehouse, specs, landing, tmp_path):
    spec = specs["business_registry"]
    first = load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    before = warehouse.query("SELECT max(_loaded_at), count(*) FROM {schema}.business_registry")
    issues = count(warehouse, "data_quality_issues")
    again = load_file(spec, landing, Q3, warehouse, tmp_path / "s", run_id="second")
    assert again.skipped
    assert again.as_counts() == first.as_counts(), "a skipped version reports what its load recorded"
    assert warehouse.query("SELECT max(_loaded_at), count(*) FROM {schema}.business_registry") == before
    assert count(warehouse, "data_quality_issues") == issues
    assert warehouse.query("SELECT status, run_id FROM {schema}.sources") == [("completed", "test")]


def test_identical_bytes_under_another_name_are_skipped(warehouse, specs, landing, tmp_path):
    spec = specs["business_registry"]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    shutil.copy(landing / spec.name / Q3, landing / spec.name / "copy.csv")
    result = load_file(spec, landing, "copy.csv", warehouse, tmp_path / "s")
    assert result.skipped
    rows = warehouse.query(
        "SELECT partition_key, status, duplicate_of_source_id IS NOT NULL FROM {schema}.sources ORDER BY source_id"
    )
    assert rows == [(Q3, "completed", False), ("copy.csv", "skipped", True)]


def test_changed_file_updates_only_changed_rows(warehouse, specs, landing, tmp_path):
    spec = specs["business_registry"]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    stamps = dict(warehouse.query("SELECT corp_number, _loaded_at FROM {schema}.business_registry"))
    frame = pl.read_csv(landing / spec.name / Q3, infer_schema=False)
    first_two = frame["Corp Number"].head(2).to_list()
    changed = frame.with_columns(
        pl.when(pl.col("Corp Number").is_in(first_two))
        .then(pl.lit("  Renamed   Holdings "))
        .otherwise(pl.col("Legal Name"))
        .alias("Legal Name")
    )
    new_row = frame.head(1).with_columns(pl.lit("999999").alias("Corp Number"))
    pl.concat([changed, new_row]).write_csv(landing / spec.name / "registry_2026-Q3-fixed.csv")

    result = load_file(spec, landing, "registry_2026-Q3-fixed.csv", warehouse, tmp_path / "s")

    assert (result.records_inserted, result.records_updated) == (1, 2)
    assert result.records_unchanged == result.records_imported - 3
    renamed = warehouse.query(
        "SELECT corp_number, legal_name, _partition_key FROM {schema}.business_registry "
        "WHERE legal_name = 'Renamed Holdings' ORDER BY corp_number"
    )
    assert renamed == [(k, "Renamed Holdings", "registry_2026-Q3-fixed.csv") for k in sorted(first_two)]
    after = dict(warehouse.query("SELECT corp_number, _loaded_at FROM {schema}.business_registry"))
    touched = {k for k in stamps if after[k] != stamps[k]}
    assert touched == set(first_two), "rows whose content hash is unchanged are not touched"


def test_row_hashes_stored_as_whole_sha256_text_migrate_to_uuids_without_touching_rows(
    warehouse, specs, landing, tmp_path, request
):
    spec = specs["business_registry"]
    first = load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    # What earlier releases stored: the whole SHA-256 in hex, of which the UUID is the first half.
    warehouse.query(
        "ALTER TABLE {schema}.business_registry ALTER COLUMN _row_hash TYPE VARCHAR "
        "USING replace(CAST(_row_hash AS VARCHAR), '-', '') || repeat('f', 32)"
    )
    stamps = dict(warehouse.query("SELECT corp_number, _loaded_at FROM {schema}.business_registry"))
    frame = pl.read_csv(landing / spec.name / Q3, infer_schema=False)
    renamed = frame["Corp Number"][0]
    changed = frame.with_columns(
        pl.when(pl.col("Corp Number") == renamed).then(pl.lit("Renamed")).otherwise("Legal Name").alias("Legal Name")
    )
    changed.write_csv(landing / spec.name / "registry_2026-Q3-fixed.csv")

    # The release that stores UUIDs runs as processes of their own, which open the warehouse anew.
    url = warehouse_url(request.node.callspec.params["warehouse"], tmp_path, request)
    warehouse = open_warehouse(url, warehouse.schema_name)
    result = load_file(spec, landing, "registry_2026-Q3-fixed.csv", warehouse, tmp_path / "s")

    types = warehouse.query(
        "SELECT lower(data_type) FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = 'business_registry' AND column_name = '_row_hash'",
        (warehouse.schema_name,),
    )
    assert types == [("uuid",)]
    assert (result.records_updated, result.records_unchanged) == (1, first.records_imported - 1)
    after = dict(warehouse.query("SELECT corp_number, _loaded_at FROM {schema}.business_registry"))
    assert {k for k in stamps if after[k] != stamps[k]} == {renamed}


def test_a_failed_publish_leaves_the_warehouse_as_it_was(warehouse, specs, landing, tmp_path):
    spec = specs["business_registry"]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    snapshot = warehouse.query("SELECT count(*), max(_loaded_at) FROM {schema}.business_registry")
    issues = count(warehouse, "data_quality_issues")

    # A corrected file whose staged output gets a record with no key: the insert fails after
    # the updates have run, inside the same transaction.
    frame = pl.read_csv(landing / spec.name / Q3, infer_schema=False)
    frame.with_columns(pl.lit("REVOKED").alias("Status")).write_csv(landing / spec.name / "bad.csv")
    hashed = hash_step(spec, locate(landing, spec.name, "bad.csv"), warehouse, tmp_path / "s", "bad-run")
    validate_step(spec, hashed)
    deduplicate_step(spec, hashed)
    staged = sorted((tmp_path / "s").rglob("harmonized-*.parquet"))
    poisoned = pl.read_parquet(staged[0]).head(1).with_columns(pl.lit(None, pl.Utf8).alias("corp_number"))
    poisoned.write_parquet(staged[0].with_name("harmonized-999999.parquet"))

    with pytest.raises(Exception), warehouse.failure_recorded(hashed.source_id):  # noqa: B017 - any DB error
        write_audit_publish(spec, hashed, warehouse, "bad-run")

    assert warehouse.query("SELECT count(*), max(_loaded_at) FROM {schema}.business_registry") == snapshot
    assert count(warehouse, "business_registry", "status = 'REVOKED'") == 0
    assert count(warehouse, "data_quality_issues") == issues
    status, message = warehouse.query(
        "SELECT status, error_message FROM {schema}.sources WHERE partition_key = 'bad.csv'"
    )[0]
    assert status == "failed" and message


def test_identifiers_from_files_are_quoted(warehouse, tmp_path):
    odd_names = {"select": {"source": 'Key"; DROP TABLE x; --'}, "from": {"source": 'it\'s "quoted"'}}
    spec = csv_spec(odd_names, name="odd_source", natural_key=("select",))
    folder = tmp_path / "landing" / "odd_source"
    folder.mkdir(parents=True)
    (folder / "f.csv").write_text('"Key""; DROP TABLE x; --","it\'s ""quoted"""\n1,a\n2,b\n1,c\n')
    result = load_file(spec, tmp_path / "landing", "f.csv", warehouse, tmp_path / "s")
    assert (result.records_imported, result.records_skipped) == (2, 1)
    assert warehouse.query('SELECT "select", "from" FROM {schema}.odd_source ORDER BY 1') == [("1", "c"), ("2", "b")]


def test_samples_header_matches_the_registry_spec(specs):
    assert [c.source for c in specs["business_registry"].columns] == list(REGISTRY_HEADER.values())


def test_reloading_an_older_file_never_overwrites_what_a_later_file_wrote(warehouse, specs, landing, tmp_path):
    spec = specs["business_registry"]
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    q4 = load_file(spec, landing, "registry_2026-Q4.csv.gz", warehouse, tmp_path / "s")
    assert q4.records_updated == 49
    after_q4 = warehouse.query("SELECT corp_number, status, _partition_key FROM {schema}.business_registry ORDER BY 1")
    # A new rule makes Q3 worth loading again; its older values must not come back.
    warehouse.add_rule(spec.name, "registered_agent", "map_value", {"from": "x", "to": "y"}, "", None)
    again = load_file(spec, landing, Q3, warehouse, tmp_path / "s", run_id="reload")
    assert not again.skipped and again.records_updated == 0
    assert warehouse.query("SELECT corp_number, status, _partition_key FROM {schema}.business_registry ORDER BY 1") == (
        after_q4
    )


def test_unique_checks_report_every_repeated_value_of_the_file_as_validated(warehouse, tmp_path):
    unique_email = {"source": "Email", "harmonize": ["email"], "checks": [{"unique": True, "severity": "warning"}]}
    spec = csv_spec({"id": {"source": "ID"}, "email": unique_email}, name="people", natural_key=("id",))
    folder = tmp_path / "landing" / "people"
    folder.mkdir(parents=True)
    rows = [f"{i},user{i}@example.com" for i in range(1, 13_000)] + ["13000, user7@example.com ", "13001,"]
    (folder / "people.csv").write_text("ID,Email\n" + "\n".join(rows) + "\n")

    result = load_file(spec, tmp_path / "landing", "people.csv", warehouse, tmp_path / "s")

    assert (result.records_imported, result.warnings) == (13_001, 2)
    issues = warehouse.query(
        "SELECT source_line_number, source_record_id, invalid_value, rule FROM {schema}.data_quality_issues "
        "WHERE issue_type = 'duplicate_value' ORDER BY source_line_number"
    )
    # Values are judged trimmed, across batches and groups; a missing value repeats nothing. Lines are
    # physical: the header is line 1.
    assert issues == [(8, "7", "user7@example.com", "email:0"), (13_001, "13000", "user7@example.com", "email:0")]


def test_a_transaction_belongs_to_the_thread_that_opened_it(warehouse, specs):
    warehouse.migrate([specs["business_registry"]])
    warehouse.query("CREATE TABLE {schema}.probe (x INTEGER)")
    inside, seen = threading.Event(), []

    def other_thread() -> None:
        inside.wait(10)
        seen.append(warehouse.query("SELECT count(*) FROM {schema}.probe")[0][0])

    reader = threading.Thread(target=other_thread)
    reader.start()
    with warehouse.transaction():
        warehouse.query("INSERT INTO {schema}.probe VALUES (1)")
        inside.set()
        reader.join(10)
        assert warehouse.query("SELECT count(*) FROM {schema}.probe")[0][0] == 1
    assert seen == [0], "another thread's query ran in its own session, not inside the open transaction"
    assert warehouse.query("SELECT count(*) FROM {schema}.probe")[0][0] == 1


def test_migration_6_counts_the_issues_an_older_version_recorded(warehouse, specs, monkeypatch):
    from harmonizer_dagster.core.warehouse import base
    from harmonizer_dagster.core.warehouse.tables import MIGRATIONS

    monkeypatch.setattr(base, "MIGRATIONS", MIGRATIONS[:5])
    warehouse.migrate([specs["business_registry"]])
    warehouse.query(
        "INSERT INTO {schema}.data_quality_issues (source_id, source_type, partition_key, file_hash, "
        "source_line_number, issue_type, severity, field_name, rule, resolution_status) "
        "SELECT CASE WHEN n <= 3 THEN 1 ELSE 2 END, 'business_registry', 'q', 'h', n, 'invalid_zip_code', 'warning', "
        "'home_office_zip', 'home_office_zip:0', CASE WHEN n = 1 THEN 'ignored' ELSE 'pending' END "
        "FROM generate_series(1, 5) AS g(n)"
    )
    monkeypatch.setattr(base, "MIGRATIONS", MIGRATIONS)
    warehouse.migrate([specs["business_registry"]])

    assert warehouse.query(
        "SELECT source_id, issues, pending FROM {schema}.version_issue_counts ORDER BY source_id"
    ) == [(1, 3, 2), (2, 2, 2)]
    assert count(warehouse, "data_quality_issues") == 5, "every issue kept"
    if not warehouse.key_index:
        # DuckDB loads a table's indexes whole to write to it: the issue tables keep none.
        tables = warehouse.query(
            "SELECT DISTINCT table_name FROM duckdb_indexes() WHERE schema_name = %s UNION "
            "SELECT DISTINCT table_name FROM duckdb_constraints() WHERE schema_name = %s AND constraint_type = "
            "'PRIMARY KEY'",
            (warehouse.schema_name, warehouse.schema_name),
        )
        assert not {"data_quality_issues", "failed_records"} & {t for (t,) in tables}
        assert warehouse.query("SELECT count(DISTINCT issue_id) FROM {schema}.data_quality_issues") == [(5,)]
    else:
        indexes = {
            name
            for (name,) in warehouse.query(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (warehouse.schema_name,)
            )
        }
        assert {"dq_issues_source_idx", "business_registry_file_hash_idx"} <= indexes


def test_a_warehouse_with_migration_7_but_not_6_keeps_one_count_per_version(warehouse, specs, monkeypatch):
    """Warehouses made before migration 6 existed ran 7 (tallies, source-id indexes): 6 and 8 then
    leave one count store per version, the same source tallies, and DuckDB's issue tables index-free."""
    from harmonizer_dagster.core.warehouse import base
    from harmonizer_dagster.core.warehouse.tables import MIGRATIONS

    by_version = {migration[0]: migration for migration in MIGRATIONS}
    monkeypatch.setattr(base, "MIGRATIONS", [by_version[v] for v in (1, 2, 3, 4, 5)])
    warehouse.migrate([specs["business_registry"]])
    warehouse.query(
        "INSERT INTO {schema}.data_quality_issues (source_id, source_type, partition_key, file_hash, "
        "source_line_number, issue_type, severity, field_name, rule, resolution_status) "
        "SELECT CASE WHEN n <= 3 THEN 1 ELSE 2 END, 'business_registry', 'q', 'h', n, 'invalid_zip_code', 'warning', "
        "'home_office_zip', 'home_office_zip:0', CASE WHEN n = 1 THEN 'ignored' ELSE 'pending' END "
        "FROM generate_series(1, 5) AS g(n)"
    )
    warehouse.query(
        "INSERT INTO {schema}.failed_records (source_id, source_type, partition_key, file_hash, record_data, "
        "error_type, error_message, reprocessed) SELECT 2, 'business_registry', 'q', 'h', '{}', 'validation_error', "
        "'bad', n = 1 FROM generate_series(1, 3) AS g(n)"
    )
    monkeypatch.setattr(base, "MIGRATIONS", [by_version[v] for v in (1, 2, 3, 4, 5, 7)])
    warehouse.migrate([specs["business_registry"]])
    tallies = "SELECT kind, label, severity, total, pending FROM {schema}.source_tallies ORDER BY kind"
    before = warehouse.query(tallies)
    monkeypatch.setattr(base, "MIGRATIONS", MIGRATIONS)
    warehouse.migrate([specs["business_registry"]])

    assert before == [("dead_letter", "validation_error", "", 3, 2), ("issue", "invalid_zip_code", "warning", 5, 4)]
    assert warehouse.query(tallies) == before
    assert warehouse.query(
        "SELECT source_id, issues, pending FROM {schema}.version_issue_counts ORDER BY source_id"
    ) == [(1, 3, 2), (2, 2, 2)]
    assert warehouse.query(
        "SELECT source_id, error_type, records, pending FROM {schema}.version_dead_letter_counts"
    ) == [(2, "validation_error", 3, 2)]
    tables = {
        t
        for t, _ in warehouse.query(
            "SELECT table_name, 1 FROM information_schema.tables WHERE table_schema = %s", (warehouse.schema_name,)
        )
    }
    assert "version_tallies" not in tables, "one count store per version"
    if not warehouse.key_index:
        indexed = warehouse.query(
            "SELECT DISTINCT table_name FROM duckdb_indexes() WHERE schema_name = %s", (warehouse.schema_name,)
        )
        assert not {"data_quality_issues", "failed_records"} & {t for (t,) in indexed}
    else:
        indexes = warehouse.query(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = %s AND indexdef LIKE %s",
            (warehouse.schema_name, "%(source_id)"),
        )
        by_table = {}
        for table, index in indexes:
            by_table.setdefault(table, []).append(index)
        assert by_table["data_quality_issues"] == ["dq_issues_source_idx"], "one source-id index"
        assert by_table["failed_records"] == ["failed_records_source_idx"]
    # Triage moves the per-version counts and the source tallies together.
    from harmonizer_dagster.core.triage import Selection, act

    act(warehouse, Selection(issue_type="invalid_zip_code"), "ignore", "known", actor="dana")
    assert warehouse.query("SELECT sum(pending) FROM {schema}.version_issue_counts") == [(0,)]
    assert warehouse.query(tallies)[1] == ("issue", "invalid_zip_code", "warning", 5, 0)


def test_a_versions_issue_counts_are_kept_as_it_is_published_and_triaged(warehouse, specs, landing, tmp_path):
    from harmonizer_dagster.core.triage import Selection, act

    spec = specs["business_registry"]
    result = load_file(spec, landing, Q3, warehouse, tmp_path / "staging")

    def kept(column):
        return dict(
            warehouse.query(
                f"SELECT issue_type, sum({column}) FROM {{schema}}.version_issue_counts GROUP BY issue_type"
            )
        )

    actual = dict(warehouse.query("SELECT issue_type, count(*) FROM {schema}.data_quality_issues GROUP BY 1"))
    assert kept("issues") == kept("pending") == actual
    assert sum(actual.values()) == result.issues and actual["duplicate_key"] == 6
    act(warehouse, Selection(issue_type="duplicate_key"), "ignore", "known", actor="dana")
    assert kept("pending") == actual | {"duplicate_key": 0}
    assert kept("issues") == actual
    # Issues point at the check that counts them from the moment they are stored.
    linked = dict(warehouse.query("SELECT rule, min(check_name) FROM {schema}.data_quality_issues GROUP BY rule"))
    assert (linked["natural_key"], linked["not_nullable"]) == ("natural_key_unique", "required_fields_complete")


def test_every_copy_of_a_repeated_record_is_recorded_as_a_duplicate(warehouse, tmp_path):
    """A file of one record repeated: each copy but the last is one duplicate-key issue, staged by
    DuckDB straight to disk and published whole, with the right counts everywhere."""
    import gzip

    from harmonizer_dagster.core.quality import checks_for, run_check

    spec = csv_spec({"k": {"source": "k"}, "v": {"source": "v"}})
    copies = 50_000
    (tmp_path / "landing" / "t").mkdir(parents=True)
    with gzip.open(tmp_path / "landing" / "t" / "copies.csv.gz", "wb") as handle:
        handle.write(b"k,v\n" + b"7,same\n" * copies)
    result = load_file(spec, tmp_path / "landing", "copies.csv.gz", warehouse, tmp_path / "staging")

    assert (result.records_in_file, result.records_imported, result.records_skipped) == (copies, 1, copies - 1)
    assert (result.issues, result.warnings) == (copies - 1, copies - 1)
    lines, distinct, first, last, kept = warehouse.query(
        "SELECT count(*), count(DISTINCT source_line_number), min(source_line_number), max(source_line_number), "
        "min(expected_format) FROM {schema}.data_quality_issues WHERE issue_type = 'duplicate_key' "
        "AND invalid_value = '7' AND check_name = 'natural_key_unique'"
    )[0]
    # Line 1 is the header: the copies are lines 2 to copies + 1, and the last one is kept.
    assert (lines, distinct, first, last) == (copies - 1, copies - 1, 2, copies)
    assert kept == f"unique natural key; the record on line {copies + 1} was kept"
    assert warehouse.query(f"SELECT k, v, _source_line FROM {warehouse.table('t')}") == [("7", "same", copies + 1)]
    assert warehouse.query("SELECT issue_type, issues, pending FROM {schema}.version_issue_counts") == [
        ("duplicate_key", copies - 1, copies - 1)
    ]
    with warehouse.transaction():
        evaluations = {c.name: run_check(warehouse, spec, c, "copies.csv.gz", "r") for c in checks_for(spec)}
    assert evaluations["row_count_reconciliation"].passed and evaluations["natural_key_unique"].passed
