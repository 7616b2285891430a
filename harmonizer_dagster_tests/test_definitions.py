"""A broken spec takes out its own source only: the others load, and the log and the UI name the error."""

import logging
import shutil

import dagster as dg
import pytest

from harmonizer_dagster.core.spec import FORMATS, SpecError
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster_tests.conftest import SOURCES_DIR


@pytest.fixture
def sources(tmp_path, monkeypatch) -> str:
    """A sources folder with two good specs and a business_registry spec whose format (line 6) is wrong;
    returns the error expected for it."""
    folder = tmp_path / "sources"
    folder.mkdir()
    for name in ("court_records", "news_articles"):
        shutil.copy(SOURCES_DIR / f"{name}.yaml", folder)
    spec = (SOURCES_DIR / "business_registry.yaml").read_text()
    assert spec.splitlines()[5] == "format: csv"
    (folder / "business_registry.yaml").write_text(spec.replace("format: csv", "format: xml", 1))
    monkeypatch.setenv("HARMONIZER_SOURCES_DIR", str(folder))
    return f"{folder / 'business_registry.yaml'}, line 6: field 'format': 'xml' is not one of {', '.join(FORMATS)}"


def test_a_broken_spec_leaves_the_healthy_sources_and_names_file_field_and_line(sources, caplog):
    with caplog.at_level(logging.ERROR, logger="dagster.builtin.harmonizer"):
        defs = build_definitions()
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"court_records", "news_articles"} <= keys
    assert not {key for key in keys if key.startswith("business_registry")}
    assert defs.resolve_job_def("load_court_records")
    assert [record.getMessage() for record in caplog.records] == [
        f"Source spec error, its source is left out of this code location: {sources}"
    ]
    sensor = defs.resolve_sensor_def("spec_errors")
    assert sources in (sensor.description or "")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with pytest.raises(SpecError, match="^" + sources.replace(".", r"\.") + "$"):
        sensor(dg.build_sensor_context())


def test_healthy_specs_make_no_error_sensor():
    assert "spec_errors" not in {sensor.name for sensor in build_definitions().sensors}


def test_a_location_assigned_a_broken_source_still_loads_and_reports_it(sources, monkeypatch):
    monkeypatch.setenv("HARMONIZER_SOURCES", "business_registry,court_records")
    defs = build_definitions()
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "court_records" in keys and "news_articles" not in keys
    assert (defs.resolve_sensor_def("spec_errors").description or "").splitlines()[1:] == [
        sources,
        "HARMONIZER_SOURCES names unknown sources: business_registry; a broken spec may declare them",
    ]


def test_a_partition_without_its_file_fails_naming_the_nearest_keys(environment, landing, instance):
    """Dagster's CLI refuses keys that are not registered; a registered key whose file is not there
    (mistyped when added in the UI, or the file renamed since) reaches the asset."""
    instance.add_dynamic_partitions("business_registry_files", ["registry_2026-Q3.csx"])
    job = build_definitions().resolve_job_def("load_business_registry")
    result = job.execute_in_process(instance=instance, partition_key="registry_2026-Q3.csx", raise_on_error=False)
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert failure.step_failure_data.error.message.strip().endswith(
        f"business_registry: no file registry_2026-Q3.csx in {landing / 'business_registry'}; "
        "nearest known keys: registry_2026-Q3.csv, registry_2026-Q4.csv.gz"
    )
