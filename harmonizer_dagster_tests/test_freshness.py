"""A source whose next version is overdue is flagged by its freshness check."""

import dagster as dg

from harmonizer_dagster.definitions import build_definitions


def check_results(instance) -> dict[str, bool]:
    base = build_definitions()
    freshness = [c for c in base.asset_checks if all(k.name == "freshness_check" for k in c.check_keys)]
    job = dg.define_asset_job("freshness", selection=dg.AssetSelection.checks(*freshness))
    defs = dg.Definitions(assets=base.assets, asset_checks=base.asset_checks, jobs=[job], resources=base.resources)
    result = defs.resolve_job_def("freshness").execute_in_process(instance=instance)
    return {e.asset_key.to_user_string(): e.passed for e in result.get_asset_check_evaluations()}


def test_freshness_fails_until_a_version_arrives(monkeypatch, landing, tmp_path):
    monkeypatch.setenv("HARMONIZER_LANDING_DIR", str(landing))
    monkeypatch.setenv("HARMONIZER_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("HARMONIZER_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'w.duckdb'}")
    with dg.instance_for_test() as instance:
        assert check_results(instance) == {
            "business_registry": False,
            "court_records": False,
            "news_articles": False,
        }
        instance.add_dynamic_partitions("news_articles_files", ["news_2026-11-20.json"])
        load = build_definitions().resolve_job_def("load_news_articles")
        assert load.execute_in_process(instance=instance, partition_key="news_2026-11-20.json").success
        assert check_results(instance)["news_articles"] is True
        assert check_results(instance)["court_records"] is False
