"""`harmonizer init-source` drafts a spec that `check-specs` accepts from every shipped sample and
from a real public data set (Palmer penguins, as CSV and Parquet): types, natural key and checks
guessed from the values, and loading the sample with the draft rejects none of its records."""

import importlib.resources
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from harmonizer_dagster.cli import main
from harmonizer_dagster.core.spec import load_spec
from harmonizer_dagster_tests.conftest import SAMPLES_DIR, land, load_file
from harmonizer_dagster_tests.test_formats import as_xlsx

PENGUINS = Path(str(importlib.resources.files("palmerpenguins") / "data" / "penguins-raw.csv"))
SHIPPED = sorted(p for p in SAMPLES_DIR.rglob("*") if p.is_file() and p.parent != SAMPLES_DIR)
PENGUIN_KEYS = [("species", "sample_number"), ("sample_number", "species"), ("studyname", "individual_id")]


def drafted(tmp_path: Path, sample: Path, capsys, name: str = "drafted"):
    """Runs `harmonizer init-source` into a sources folder; returns the spec and what it said it guessed."""
    folder = tmp_path / "sources"
    folder.mkdir(exist_ok=True)
    target = folder / f"{name}.yaml"
    assert main(["init-source", str(sample), "--name", name, "-o", str(target)]) == 0
    said = capsys.readouterr().err
    assert main(["check-specs", str(folder)]) == 0
    return load_spec(target), said


def load_drafted(warehouse, tmp_path, spec, sample: Path, data: bytes | None = None):
    load_file(
        spec, land(tmp_path, spec, sample.name, data or sample.read_bytes()), sample.name, warehouse, tmp_path / "s"
    )
    counts = warehouse.partition_counts(spec.name, sample.name)
    rejected = warehouse.query("SELECT DISTINCT error_type FROM {schema}.failed_records")
    return counts, [kind for (kind,) in rejected]


@pytest.mark.parametrize("sample", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_sample_drafts_a_spec_that_loads_it_rejecting_nothing(warehouse, tmp_path, capsys, sample):
    spec, said = drafted(tmp_path, sample, capsys)
    counts, rejected = load_drafted(warehouse, tmp_path, spec, sample)
    # A line the parser cannot split is no record a spec could accept; every parsed record loads.
    assert set(rejected) <= {"malformed_record"}
    assert (
        counts["records_imported"] + counts["records_skipped"] + counts["records_failed"] == counts["records_in_file"]
    )
    assert "natural key:" in said and f"format: {spec.format}" in said


def test_the_registry_draft_proposes_its_key_rules_and_checks(tmp_path, capsys):
    spec, said = drafted(tmp_path, SAMPLES_DIR / "business_registry" / "registry_2026-Q3.csv", capsys)
    assert spec.natural_key == ("corp_number",)
    assert "6 of its keys repeat in the sample" in said
    assert (spec.version_strategy, spec.delimiter) == ("quarterly", ",")
    assert spec.column("email").harmonize == ("email",) and spec.column("email").checks[0].expected_format
    assert spec.column("home_office_zip").harmonize == ("us_zip",)
    assert spec.column("phone").harmonize == ("phone_e164",)
    assert spec.column("home_office_state").checks[0].issue_type == "invalid_state"
    assert spec.column("status").checks[0].allowed_values == ("ACTIVE", "DISSOLVED", "INACTIVE", "REVOKED")
    assert spec.column("corp_number").type == "string"  # leading zeros: a code
    assert "3 of 1006 values are no date" in said  # the sample's impossible dates keep it text, saying so


def penguin_types(spec) -> dict[str, tuple]:
    return {c.name: (c.type, c.scale if c.type == "decimal" else None, c.formats) for c in spec.columns}


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_palmer_penguins_draft_types_the_columns_proposes_the_key_and_loads_exactly(warehouse, tmp_path, capsys, form):
    sample = PENGUINS
    if form == "parquet":
        sample = tmp_path / "penguins-raw.parquet"
        pq.write_table(pacsv.read_csv(PENGUINS), sample)
    spec, _ = drafted(tmp_path, sample, capsys, name="penguins")
    types = penguin_types(spec)
    assert types["sample_number"][0] == "integer"
    assert types["culmen_length_mm"] == ("decimal", 1, ())
    assert types["flipper_length_mm"][0] == types["body_mass_g"][0] == "integer"
    assert types["clutch_completion"][0] == "boolean"
    assert types["date_egg"] == ("date", None, ("%Y-%m-%d",))
    assert types["species"][0] == types["individual_id"][0] == "string"
    assert spec.natural_key in PENGUIN_KEYS
    if form == "csv":
        assert spec.null_values == ("NA",)
    counts, rejected = load_drafted(warehouse, tmp_path, spec, sample)
    assert rejected == []
    assert (counts["records_in_file"], counts["records_imported"], counts["records_failed"]) == (344, 344, 0)
    table = warehouse.table("penguins")
    assert warehouse.query(f"SELECT count(*), count(culmen_length_mm), sum(body_mass_g) FROM {table}") == [
        (344, 342, 1437000)
    ]


def test_a_workbook_drafts_its_fullest_sheet_and_loads_it_rejecting_nothing(warehouse, tmp_path, capsys):
    sample = tmp_path / "registry.xlsx"
    sample.write_bytes(as_xlsx(sheet="Registry"))  # a title sheet comes first
    spec, said = drafted(tmp_path, sample, capsys)
    assert (spec.format, spec.sheet, spec.header_row, spec.natural_key) == ("xlsx", "Registry", 1, ("corp_number",))
    assert "sheet: 'Registry', the one with the most rows" in said
    assert spec.column("incorporation_date").type == "string"  # date cells beside text ones
    counts, rejected = load_drafted(warehouse, tmp_path, spec, sample)
    assert rejected == [] and counts["records_imported"] + counts["records_skipped"] == 1006


def test_without_output_the_spec_goes_to_stdout_and_the_guesses_to_stderr(capsys):
    assert main(["init-source", str(SAMPLES_DIR / "news_articles" / "news_2026-11-20.json")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# Drafted by `harmonizer init-source` from news_2026-11-20.json")
    assert "natural_key: [id]" in out
    assert "natural key: id, unique and never empty in the sample" in err
