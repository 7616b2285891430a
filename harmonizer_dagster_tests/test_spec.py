from pathlib import Path

import pytest

from harmonizer_dagster.core.spec import SpecError, load_spec, load_specs
from harmonizer_dagster_tests.conftest import SOURCES_DIR

VALID = """
name: widgets
owner: team@example.org
format: csv
natural_key: [widget_id]
columns:
  widget_id: {source: Widget ID}
  price: {type: decimal, checks: [{min: 0}]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "widgets.yaml"
    path.write_text(text)
    return path


def test_shipped_specs_load():
    specs = {s.name: s for s in load_specs(SOURCES_DIR)}
    assert set(specs) == {"business_registry", "court_records", "news_articles"}
    registry = specs["business_registry"]
    assert registry.natural_key == ("corp_number",)
    assert registry.column("corp_number").source == "Corp Number"
    assert registry.column("corp_number").required, "natural-key columns are always required"
    assert registry.version_strategy == "quarterly"
    assert {specs["court_records"].format, specs["news_articles"].format} == {"ndjson", "json"}


def test_a_small_spec_file_is_a_source(tmp_path):
    spec = load_spec(write(tmp_path, VALID))
    assert spec.name == "widgets"
    assert spec.column("price").checks[0].kind == "range"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (("natural_key: [widget_id]\n", ""), "natural_key", "is required"),
        (("natural_key: [widget_id]", "natural_key: [nope]"), "natural_key", "not a declared column"),
        (
            ("widget_id: {source: Widget ID}", "widget_id: {harmonize: [shout]}"),
            "columns.widget_id.harmonize[0]",
            "unknown harmonization rule",
        ),
        (("checks: [{min: 0}]", "checks: [{minimum: 0}]"), "columns.price.checks[0]", "needs one of"),
        (("format: csv", "format: xml"), "format", "not one of"),
        (("owner: team@example.org", "owner: team@example.org\ncolour: blue"), "colour", "unknown field"),
        (
            ("checks: [{min: 0}]", "checks: [{pattern: '(unclosed'}]"),
            "columns.price.checks[0].pattern",
            "invalid regular expression",
        ),
    ],
)
def test_invalid_spec_names_file_and_field(tmp_path, change, field, message):
    path = write(tmp_path, VALID.replace(*change))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert f"'{field}'" in str(error.value)
    assert message in str(error.value)


def test_bad_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(SpecError, match=r"widgets\.yaml: not valid YAML"):
        load_spec(path)


def test_two_specs_cannot_declare_the_same_source(tmp_path):
    write(tmp_path, VALID)
    (tmp_path / "again.yaml").write_text(VALID)
    with pytest.raises(SpecError, match="already declared"):
        load_specs(tmp_path)


def test_patterns_the_validator_cannot_run_are_refused_at_load(tmp_path):
    path = write(tmp_path, VALID.replace("checks: [{min: 0}]", "checks: [{pattern: '^(?!000)\\\\d{3}$'}]"))
    with pytest.raises(SpecError, match="invalid regular expression"):
        load_spec(path)


def test_range_bounds_must_be_iso_dates_or_numbers(tmp_path):
    path = write(
        tmp_path,
        VALID.replace(
            "price: {type: decimal, checks: [{min: 0}]}", "price: {type: date, checks: [{min: '01/02/2000'}]}"
        ),
    )
    with pytest.raises(SpecError, match="ISO date"):
        load_spec(path)
