import re
from pathlib import Path

import pytest

from harmonizer_dagster.core.spec import FORMATS, SpecCatalog, SpecError, load_spec, load_specs
from harmonizer_dagster_tests.conftest import SOURCES_DIR, UNCLOSED_LIST

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
    assert spec.max_rejected_rate == 0.5, "by default a version rejecting most of its records is held back"
    assert load_spec(write(tmp_path, VALID + "max_rejected_rate: 0.1\n")).max_rejected_rate == 0.1


@pytest.mark.parametrize(
    ("change", "field", "line", "message"),
    [
        (("natural_key: [widget_id]\n", ""), "natural_key", None, "is required"),
        (("natural_key: [widget_id]", "natural_key: [nope]"), "natural_key", 5, "not a declared column"),
        (
            ("widget_id: {source: Widget ID}", "widget_id: {harmonize: [shout]}"),
            "columns.widget_id.harmonize[0]",
            7,
            "unknown harmonization rule",
        ),
        (("checks: [{min: 0}]", "checks: [{minimum: 0}]"), "columns.price.checks[0]", 8, "needs one of"),
        (("format: csv", "format: xml"), "format", 4, "not one of"),
        (("owner: team@example.org", "owner: team@example.org\ncolour: blue"), "colour", 4, "unknown field"),
        (
            ("checks: [{min: 0}]", "checks: [{pattern: '(unclosed'}]"),
            "columns.price.checks[0].pattern",
            8,
            "invalid regular expression",
        ),
        (
            ("owner: team@example.org", "owner: team@example.org\nmax_rejected_rate: 1.5"),
            "max_rejected_rate",
            4,
            "must be a number between 0 and 1",
        ),
        # A field that is missing is placed at the field that should hold it.
        (("columns:", "schedule: {timezone: UTC, fetch: {path: /in, file_name: x}}\ncolumns:"), "schedule.cron", 6, ""),
    ],
)
def test_invalid_spec_names_file_field_and_line(tmp_path, change, field, line, message):
    path = write(tmp_path, VALID.replace(*change))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    where = f"{path}, line {line}: " if line else f"{path}: "
    assert str(error.value).startswith(where + f"field '{field}")
    assert message in str(error.value)
    assert (error.value.file, error.value.line) == (str(path), line)


def test_bad_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "name: widgets\ncolumns: [unclosed\n")
    with pytest.raises(SpecError, match=rf"widgets\.yaml, line 3: not valid YAML: {re.escape(UNCLOSED_LIST)}"):
        load_spec(path)


def test_every_error_in_a_file_is_reported_at_once(tmp_path):
    broken = (
        VALID.replace("format: csv", "format: xml\ndelimiter: 7\ncolour: blue")
        .replace("widget_id: {source: Widget ID}", "widget_id: {harmonize: [shout, trim, whisper]}")
        .replace("checks: [{min: 0}]", "checks: [{min: 0}, {minimum: 0}, {max: soon}]")
        + "  size: {type: huge}\n"
    )
    with pytest.raises(SpecError) as error:
        load_spec(write(tmp_path, broken))
    found = [(problem.line, problem.field) for problem in error.value.problems]
    assert found == [
        (4, "format"),
        (5, "delimiter"),
        (6, "colour"),
        (9, "columns.widget_id.harmonize[0]"),
        (9, "columns.widget_id.harmonize[2]"),
        (10, "columns.price.checks[1]"),
        (10, "columns.price.checks[2].max"),
        (11, "columns.size.type"),
    ]
    assert str(error.value).splitlines() == [str(problem) for problem in error.value.problems]


def test_two_specs_cannot_declare_the_same_source(tmp_path):
    write(tmp_path, VALID)
    (tmp_path / "again.yaml").write_text(VALID)
    with pytest.raises(SpecError, match=r"widgets\.yaml, line 2: field 'name': 'widgets' is already declared in"):
        load_specs(tmp_path)


def test_a_broken_spec_leaves_the_others_loaded_and_reports_every_file(tmp_path):
    write(tmp_path, VALID)
    (tmp_path / "gadgets.yaml").write_text(VALID.replace("widgets", "gadgets").replace("format: csv", "format: xml"))
    (tmp_path / "gizmos.yml").write_text("name: gizmos\nowner: [unclosed\n")
    catalog = load_specs(tmp_path, strict=False)
    assert isinstance(catalog, SpecCatalog)
    assert [spec.name for spec in catalog] == ["widgets"]
    assert [str(error) for error in catalog.errors] == [
        f"{tmp_path / 'gadgets.yaml'}, line 4: field 'format': 'xml' is not one of {', '.join(FORMATS)}",
        f"{tmp_path / 'gizmos.yml'}, line 3: not valid YAML: {UNCLOSED_LIST}",
    ]
    with pytest.raises(SpecError) as strict:
        load_specs(tmp_path)
    assert str(strict.value).splitlines() == [str(error) for error in catalog.errors]


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
