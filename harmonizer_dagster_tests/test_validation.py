import pyarrow as pa
import pytest

from harmonizer_dagster.core.validation import SpecValidator, columns_with_nul

CLEAN = {
    "corp_number": "000001",
    "legal_name": "Acme Inc",
    "entity_type": "LLC",
    "status": "ACTIVE",
    "incorporation_date": "2020-01-02",
    "home_office_address": "1 Main St",
    "home_office_city": "Albany",
    "home_office_state": "NY",
    "home_office_zip": "12207",
    "registered_agent": "Agent",
    "email": "a@b.com",
    "phone": "(518) 555-0100",
}


def validate(specs, *changes: dict):
    records = [{**CLEAN, "corp_number": f"{i + 1:06d}", **change} for i, change in enumerate(changes)]
    batch = pa.RecordBatch.from_pylist([{**r, "_source_line": i + 1} for i, r in enumerate(records)])
    return SpecValidator(specs["business_registry"]).validate(batch)


def test_clean_records_pass_without_issues(specs):
    result = validate(specs, {}, {"incorporation_date": "03/04/2019"}, {"incorporation_date": "12-Mar-2001"})
    assert result.accepted.height == 3
    assert result.issues.height == 0
    assert result.failed.height == 0


@pytest.mark.parametrize(
    ("change", "issue_type", "severity"),
    [
        ({"legal_name": None}, "missing_required_field", "error"),
        ({"legal_name": "   "}, "missing_required_field", "error"),  # blank counts as missing
        ({"legal_name": ""}, "missing_required_field", "error"),
        ({"incorporation_date": "02/30/2020"}, "invalid_date", "error"),
        ({"home_office_zip": "AB123"}, "invalid_zip_code", "error"),
        ({"status": "ASLEEP"}, "invalid_value", "error"),
        ({"corp_number": "12X"}, "invalid_corp_number", "error"),
        ({"home_office_zip": "1478"}, "invalid_zip_code", "warning"),
        ({"email": "not-an-email"}, "invalid_email", "warning"),
        ({"entity_type": "GUILD"}, "invalid_value", "warning"),
        ({"incorporation_date": "1700-01-01"}, "out_of_range", "warning"),
    ],
)
def test_each_rule_raises_one_issue_with_its_severity(specs, change, issue_type, severity):
    result = validate(specs, {}, change)
    issues = result.issues.to_dicts()
    assert len(issues) == 1, issues
    field = next(iter(change))
    assert issues[0] | {"rule": None} == {
        "source_line_number": 2,
        "source_record_id": change.get("corp_number", "000002"),
        "issue_type": issue_type,
        "severity": severity,
        "field_name": field,
        "invalid_value": change[field],
        "expected_format": issues[0]["expected_format"],
        "rule": None,
    }
    rejected = severity == "error"
    assert result.accepted.height == (1 if rejected else 2)
    assert result.failed.height == (1 if rejected else 0)
    if rejected:
        failed = result.failed.to_dicts()[0]
        assert failed["error_type"] == "validation_error"
        assert issue_type in failed["error_message"]
        assert '"Corp Number"' in failed["record_data"], "the raw record keeps the source's field names"


def test_values_are_judged_trimmed_and_case_insensitively_where_declared(specs):
    result = validate(specs, {"corp_number": " 000001 ", "status": "active", "legal_name": "  Acme  "})
    assert result.issues.height == 0
    assert result.accepted.to_dicts()[0]["legal_name"] == "Acme"


def test_an_error_on_a_field_hides_warnings_on_the_same_field(specs):
    # "AB12" breaks both zip rules; triage should see the error only.
    result = validate(specs, {"home_office_zip": "AB12"})
    assert result.issues.select("severity", "field_name").to_dicts() == [
        {"severity": "error", "field_name": "home_office_zip"}
    ]


def test_several_errors_reject_the_record_once(specs):
    result = validate(specs, {"legal_name": None, "incorporation_date": "13/45/2020"})
    assert result.issues.height == 2
    assert result.failed.height == 1
    assert (
        "legal_name" in result.failed["error_message"][0] and "incorporation_date" in result.failed["error_message"][0]
    )


def test_range_bounds_are_iso_whatever_the_column_formats(specs):
    from harmonizer_dagster.core.spec import parse_spec

    spec = parse_spec(
        {
            "name": "t",
            "owner": "o",
            "format": "csv",
            "natural_key": ["k"],
            "columns": {
                "k": {},
                "d": {"type": "date", "formats": ["%m/%d/%Y"], "checks": [{"min": "2000-01-01", "max": "2030-12-31"}]},
            },
        }
    )
    batch = pa.RecordBatch.from_pylist(
        [{"k": str(i), "d": d, "_source_line": i} for i, d in enumerate(["01/02/1900", "06/15/2010", "01/02/2100"])]
    )
    result = SpecValidator(spec).validate(batch)
    assert result.issues["invalid_value"].to_list() == ["01/02/1900", "01/02/2100"]


def test_decimals_that_do_not_fit_the_warehouse_type_are_rejected():
    from harmonizer_dagster.core.spec import parse_spec

    spec = parse_spec(
        {
            "name": "t",
            "owner": "o",
            "format": "csv",
            "natural_key": ["k"],
            "columns": {"k": {}, "amount": {"type": "decimal", "precision": 10, "scale": 2}},
        }
    )
    values = ["12.50", "123456789012345678", "nan", "inf", "7\x00"]
    batch = pa.RecordBatch.from_pylist([{"k": str(i), "amount": v, "_source_line": i} for i, v in enumerate(values)])
    result = SpecValidator(spec).validate(batch)
    assert dict(zip(result.issues["invalid_value"], result.issues["issue_type"], strict=True)) == {
        "123456789012345678": "invalid_decimal",
        "inf": "invalid_decimal",
        "nan": "invalid_decimal",
        "7\u2400": "altered_value",
    }
    assert result.accepted["amount"].to_list() == ["12.50", "7"], "NUL bytes are stripped, with a warning"


def test_columns_with_nul_reads_the_bytes_of_every_chunk_and_slice():
    table = pa.table(
        {
            "a": ["x", "y\x00z", None],
            "b": ["p", "q", "r"],
            "c": pa.array(["s\x00", "t", "u"], pa.large_string()),
            "n": [1, 2, 3],
        }
    )
    assert columns_with_nul(table) == ["a", "c"]
    assert columns_with_nul(table.slice(2)) == []
    assert columns_with_nul(pa.concat_tables([table.slice(2), table.slice(0, 1)])) == ["c"]
