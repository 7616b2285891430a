"""Headers as people write them: names match whatever their case and surrounding whitespace, and a
renamed header loads under an alias the spec lists, on every warehouse."""

import dataclasses
import json

import pytest

from harmonizer_dagster.core.reading import SourceFormatError
from harmonizer_dagster.core.spec import SpecError, parse_spec
from harmonizer_dagster_tests.conftest import SAMPLE, land, load_file, load_sample


def with_header(header: str) -> bytes:
    lines = SAMPLE.read_text(encoding="utf-8").split("\n", 1)
    return (header + "\n" + lines[1]).encode()


def test_re_cased_and_padded_headers_load_as_the_spec_names_them(warehouse, tmp_path, specs, reference):
    header = SAMPLE.read_text(encoding="utf-8").split("\n", 1)[0].split(",")
    recased = ",".join(f"  {name.upper()} " if i % 2 else name.lower() for i, name in enumerate(header))
    loaded = load_sample(warehouse, tmp_path, specs["business_registry"], "registry_2026-Q3.csv", with_header(recased))
    assert loaded == reference
    assert loaded[1]["records_imported"] > 900


def renamed_spec(specs):
    spec = specs["business_registry"]
    columns = tuple(
        dataclasses.replace(c, aliases=("CorpNo", "corp_no")) if c.name == "corp_number" else c for c in spec.columns
    )
    return dataclasses.replace(spec, columns=columns)


def test_a_renamed_header_loads_under_an_alias(warehouse, tmp_path, specs, reference):
    data = with_header(SAMPLE.read_text(encoding="utf-8").split("\n", 1)[0].replace("Corp Number", "CORP_NO"))
    assert load_sample(warehouse, tmp_path, renamed_spec(specs), "registry_2026-Q3.csv", data) == reference


def test_a_header_matching_a_column_twice_fails_naming_both(warehouse, tmp_path, specs):
    header = SAMPLE.read_text(encoding="utf-8").split("\n", 1)[0]
    data = (header + ",CorpNo\n" + "\n".join(line + ",1" for line in SAMPLE.read_text().splitlines()[1:])).encode()
    with pytest.raises(SourceFormatError, match=r"\['Corp Number', 'CorpNo'\], which all match column corp_number"):
        load_sample(warehouse, tmp_path, renamed_spec(specs), "registry_2026-Q3.csv", data)


def test_a_missing_column_names_its_aliases(warehouse, tmp_path, specs):
    header = SAMPLE.read_text(encoding="utf-8").split("\n", 1)[0].replace("Corp Number", "Number")
    with pytest.raises(SourceFormatError, match=r"missing columns \['Corp Number' \(or 'CorpNo', 'corp_no'\)\]"):
        load_sample(warehouse, tmp_path, renamed_spec(specs), "registry_2026-Q3.csv", with_header(header))


def test_json_keys_match_whatever_their_case_and_aliases(warehouse, tmp_path):
    spec = parse_spec(
        {
            "name": "people",
            "owner": "o",
            "format": "ndjson",
            "natural_key": ["person_id"],
            "columns": {
                "person_id": {"source": ["Person ID", "PersonId"]},
                "full_name": {"source": "Full Name", "required": True},
            },
        }
    )
    records = [{"person id": "1", "FULL NAME": "Ada"}, {"PersonId": "2", "full name": "Grace"}]
    data = "\n".join(json.dumps(r) for r in records).encode()
    load_file(spec, land(tmp_path, spec, "people.ndjson", data), "people.ndjson", warehouse, tmp_path / "staging")
    assert warehouse.query(f"SELECT person_id, full_name FROM {warehouse.table('people')} ORDER BY 1") == [
        ("1", "Ada"),
        ("2", "Grace"),
    ]


def test_a_spec_whose_columns_read_one_header_whatever_its_case_is_refused():
    with pytest.raises(SpecError, match=r"'corp no' is read by column 'a' too"):
        parse_spec(
            {
                "name": "t",
                "owner": "o",
                "format": "csv",
                "natural_key": ["a"],
                "columns": {"a": {"source": ["Corp No", "A"]}, "b": {"source": "corp no "}},
            }
        )


def test_source_lists_parse_with_the_first_as_the_canonical_name():
    spec = parse_spec(
        {"name": "t", "owner": "o", "format": "csv", "natural_key": ["a"], "columns": {"a": {"source": ["A", "Alt"]}}}
    )
    assert (spec.columns[0].source, spec.columns[0].aliases) == ("A", ("Alt",))
    with pytest.raises(SpecError, match=r"field 'columns\.a\.source': must be a header name or a non-empty list"):
        parse_spec({"name": "t", "owner": "o", "format": "csv", "natural_key": ["a"], "columns": {"a": {"source": []}}})
