"""`schema_evolution:` decides what a version with other columns than the spec's does, on every
warehouse: `report` loads the spec's columns and warns, `evolve` adds the new column to the table
and loads it from then on, `freeze` fails the version; typed values that stop parsing are drift."""

import dataclasses
import json

import polars as pl
import pytest

from harmonizer_dagster.core.quality import checks_for, run_check
from harmonizer_dagster.core.reading import SourceFormatError
from harmonizer_dagster.core.spec import SpecError, parse_spec
from harmonizer_dagster_tests.conftest import SAMPLE, land, load_file

SOURCE = "business_registry"
Q3, Q4 = "registry_2026-Q3.csv", "registry_2026-Q4.csv"


def with_fax() -> bytes:
    """The sample with a column the spec does not name, as a later version adds one."""
    frame = pl.read_csv(SAMPLE, infer_schema=False)
    return frame.with_columns(pl.format("555-{}", pl.col("Corp Number")).alias("Fax Number")).write_csv().encode()


def schema_drift(store, spec, partition_key):
    check = next(c for c in checks_for(spec) if c.name == "schema_drift")
    return check, run_check(store, spec, check, partition_key, "run")


def columns(store, table: str) -> list[str]:
    return [
        row[0]
        for row in store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (store.schema_name, table),
        )
    ]


def policy(specs, evolution: str):
    return dataclasses.replace(specs[SOURCE], schema_evolution=evolution)


def test_report_loads_the_spec_columns_and_warns(warehouse, tmp_path, specs):
    spec = policy(specs, "report")
    load_file(spec, land(tmp_path, spec, Q4, with_fax()), Q4, warehouse, tmp_path / "s")
    assert "fax_number" not in columns(warehouse, SOURCE)
    check, result = schema_drift(warehouse, spec, Q4)
    assert (check.severity, result.passed, result.message) == ("warning", False, "columns not in the spec: Fax Number")


def test_evolve_adds_a_new_column_to_the_table_and_loads_it_from_then_on(warehouse, tmp_path, specs):
    spec = policy(specs, "evolve")
    landing = land(tmp_path, spec, Q3, SAMPLE.read_bytes())
    load_file(spec, landing, Q3, warehouse, tmp_path / "s")
    assert "fax_number" not in columns(warehouse, SOURCE)
    load_file(spec, land(tmp_path, spec, Q4, with_fax()), Q4, warehouse, tmp_path / "s")
    assert "fax_number" in columns(warehouse, SOURCE)
    table = warehouse.table(SOURCE)
    assert warehouse.query(f"SELECT fax_number FROM {table} WHERE corp_number = '000002'") == [("555-000002",)]
    assert warehouse.query(f"SELECT count(*) FROM {table} WHERE fax_number IS NULL")[0][0] == 0
    _, result = schema_drift(warehouse, spec, Q4)
    assert result.passed
    assert result.message == "columns added to the table: fax_number (from 'Fax Number')"
    recorded = warehouse.query(
        "SELECT passed, counts FROM {schema}.data_quality_checks "
        "WHERE check_name = 'schema_drift' AND partition_key = %s",
        (Q4,),
    )
    assert recorded[0][0] is True
    assert json.loads(recorded[0][1])["evolved"] == {"fax_number": "Fax Number"}
    # A later version without the column still loads; its rows have no fax number.
    again = "registry_2027-Q1.csv"
    load_file(spec, land(tmp_path, spec, again, SAMPLE.read_bytes()), again, warehouse, tmp_path / "s")
    assert (
        warehouse.partition_counts(SOURCE, again)["records_failed"]
        == warehouse.partition_counts(SOURCE, Q3)["records_failed"]
    )


def test_freeze_fails_a_version_with_a_new_column(warehouse, tmp_path, specs):
    spec = policy(specs, "freeze")
    with pytest.raises(SourceFormatError, match=r"columns not in the spec \['Fax Number'\], and the spec's columns"):
        load_file(spec, land(tmp_path, spec, Q4, with_fax()), Q4, warehouse, tmp_path / "s")
    assert warehouse.query(f"SELECT count(*) FROM {warehouse.table(SOURCE)}")[0][0] == 0


def test_freeze_fails_a_version_missing_a_column_even_an_optional_one(warehouse, tmp_path):
    spec = parse_spec(
        {
            "name": "people",
            "owner": "o",
            "format": "ndjson",
            "schema_evolution": "freeze",
            "natural_key": ["id"],
            "columns": {"id": {}, "nickname": {}},
        }
    )
    data = b'{"id": "1"}\n{"id": "2"}\n'
    with pytest.raises(SourceFormatError, match=r"no column for \['nickname'\], and the spec's columns are frozen"):
        load_file(spec, land(tmp_path, spec, "p.ndjson", data), "p.ndjson", warehouse, tmp_path / "s")


def test_values_that_stop_parsing_as_their_type_are_drift_blocking_under_freeze(warehouse, tmp_path, specs):
    frame = pl.read_csv(SAMPLE, infer_schema=False)
    retyped = frame.with_columns(pl.lit("sometime in spring").alias("Incorporation Date")).write_csv().encode()
    for evolution, severity in (("report", "warning"), ("freeze", "error")):
        spec = policy(specs, evolution)
        name = f"{evolution}.csv"
        load_file(spec, land(tmp_path, spec, name, retyped), name, warehouse, tmp_path / "s")
        check, result = schema_drift(warehouse, spec, name)
        assert (check.severity, result.passed) == (severity, False)
        assert result.message == "columns whose values no longer parse as their type: incorporation_date"


def test_schema_evolution_is_one_of_the_policies_and_part_of_the_fingerprint(specs):
    with pytest.raises(SpecError, match=r"'schema_evolution': 'discard_row' is not one of report, evolve, freeze"):
        parse_spec(
            {
                "name": "t",
                "owner": "o",
                "format": "csv",
                "natural_key": ["a"],
                "columns": {"a": {}},
                "schema_evolution": "discard_row",
            }
        )
    assert policy(specs, "evolve").processing != specs[SOURCE].processing


def test_evolve_loads_a_new_parquet_column_too(warehouse, tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = parse_spec(
        {
            "name": "people",
            "owner": "o",
            "format": "parquet",
            "schema_evolution": "evolve",
            "natural_key": ["id"],
            "columns": {"id": {"type": "integer"}},
        }
    )
    out = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2], "Signed Up": [True, None]}), out)
    load_file(spec, land(tmp_path, spec, "p.parquet", out.getvalue()), "p.parquet", warehouse, tmp_path / "s")
    assert warehouse.query(f"SELECT id, signed_up FROM {warehouse.table('people')} ORDER BY id") == [
        (1, "true"),
        (2, None),
    ]


def test_null_values_are_read_as_empty_and_must_be_strings(warehouse, tmp_path):
    spec = parse_spec(
        {
            "name": "t",
            "owner": "o",
            "format": "csv",
            "null_values": ["NA", "n/a"],
            "natural_key": ["k"],
            "columns": {"k": {}, "mass": {"type": "integer", "required": True}},
        }
    )
    data = b"k,mass\na,NA\nb, n/a \nc,3\nd,4\ne,5\n"
    load_file(spec, land(tmp_path, spec, "t.csv", data), "t.csv", warehouse, tmp_path / "s")
    assert warehouse.query(f"SELECT k, mass FROM {warehouse.table('t')} ORDER BY k") == [("c", 3), ("d", 4), ("e", 5)]
    assert warehouse.query("SELECT source_line_number, issue_type FROM {schema}.data_quality_issues ORDER BY 1") == [
        (2, "missing_required_field"),
        (3, "missing_required_field"),
    ]
    with pytest.raises(SpecError, match=r"'null_values': must be a list of non-empty strings"):
        parse_spec(
            {
                "name": "t",
                "owner": "o",
                "format": "csv",
                "natural_key": ["k"],
                "columns": {"k": {}},
                "null_values": [None],
            }
        )
