import datetime

import polars as pl
import pytest

from harmonizer_dagster.core.harmonization import harmonize
from harmonizer_dagster.core.validation import SpecValidator
from harmonizer_dagster_tests.conftest import csv_spec


def canonical(column: dict, values: list):
    spec = csv_spec({"k": {}, "v": column})
    staged = pl.DataFrame(
        {"k": [str(i) for i in range(len(values))], "v": values, "_source_line": list(range(len(values)))}
    )
    return harmonize(spec, staged)["v"].to_list()


@pytest.mark.parametrize(
    ("column", "raw", "expected"),
    [
        (
            {"harmonize": ["us_zip"]},
            ["1478", "12345", "123456789", "12345-6789", " 02134 ", "AB123"],
            ["01478", "12345", "12345-6789", "12345-6789", "02134", "AB123"],
        ),
        (
            {"harmonize": ["phone_e164"]},
            ["(518) 555-0100", "1-518-555-0100", "+44 20 7946 0958", "555-0100"],
            ["+15185550100", "+15185550100", "+442079460958", "555-0100"],
        ),
        ({"harmonize": ["email"]}, ["  Info@Example.COM "], ["info@example.com"]),
        ({"harmonize": ["trim", "collapse_whitespace", "uppercase"]}, ["  new   york \t city "], ["NEW YORK CITY"]),
        ({"harmonize": ["collapse_whitespace"]}, ["a\tb", "a b", "x  y\n\rz", "one"], ["a b", "a b", "x y z", "one"]),
        ({"type": "integer"}, ["42", "-7"], [42, -7]),
        ({"type": "boolean"}, ["Yes", "f", "TRUE", "0"], [True, False, True, False]),
    ],
)
def test_text_rules_and_types(column, raw, expected):
    assert canonical(column, raw) == expected


def test_dates_in_declared_formats_become_iso_dates():
    values = canonical(
        {"type": "date", "formats": ["%Y-%m-%d", "%m/%d/%Y", "%d-%b-%Y"]}, ["2020-01-02", "03/04/2019", "12-Mar-2001"]
    )
    assert values == [datetime.date(2020, 1, 2), datetime.date(2019, 3, 4), datetime.date(2001, 3, 12)]


def test_row_hash_depends_on_canonical_values_only():
    spec = csv_spec({"k": {}, "v": {"harmonize": ["email"]}})
    hash_a = harmonize(spec, pl.DataFrame({"k": ["1"], "v": ["X@Y.com"], "_source_line": [1]}))
    hash_b = harmonize(spec, pl.DataFrame({"k": ["1"], "v": [" x@y.COM"], "_source_line": [9]}))
    assert hash_a["_row_hash"].to_list() == hash_b["_row_hash"].to_list()


def test_validated_rows_are_stored_as_validation_parsed_them():
    spec = csv_spec(
        {
            "k": {},
            "born": {"type": "date", "formats": ["%Y-%m-%d", "%m/%d/%Y"]},
            "seen": {"type": "date", "formats": ["%Y-%m-%d"], "harmonize": ["collapse_whitespace"]},
            "count": {"type": "integer", "harmonize": ["trim"]},
        }
    )
    raw = pl.DataFrame(
        {
            "k": ["1", "2"],
            "born": [" 03/04/2019", "2020-01-02"],
            "seen": ["2021-05-06", "2022-07-08"],
            "count": ["7 ", "-3"],
            "_source_line": [1, 2],
        }
    )
    accepted = SpecValidator(spec).validate(raw).accepted
    assert "born:typed" in accepted.columns, "validation hands its parse on"
    canonical = harmonize(spec, accepted)
    assert canonical.select("born", "seen", "count").rows() == [
        (datetime.date(2019, 3, 4), datetime.date(2021, 5, 6), 7),
        (datetime.date(2020, 1, 2), datetime.date(2022, 7, 8), -3),
    ]
    assert canonical["_row_hash"].to_list() == harmonize(spec, raw)["_row_hash"].to_list()
