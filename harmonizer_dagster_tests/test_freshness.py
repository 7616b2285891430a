"""A source whose next version is overdue fails its freshness policy, as Dagster's freshness daemon
(run by `dagster dev` and the production daemon) evaluates it."""

from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.freshness import FreshnessDaemon

from harmonizer_dagster.definitions import build_definitions

SOURCES = [dg.AssetKey(name) for name in ("business_registry", "court_records", "news_articles")]


def freshness(instance: dg.DagsterInstance) -> dict[str, FreshnessState]:
    """One iteration of the freshness daemon over the code location, and the states it recorded."""
    target = ModuleTarget("harmonizer_dagster", None, None, "harmonizer_dagster")
    with create_test_daemon_workspace_context(target, instance) as workspace:
        list(FreshnessDaemon().run_iteration(workspace))
    records = instance.get_freshness_state_records(SOURCES)
    return {key.to_user_string(): record.freshness_state for key, record in records.items()}


def test_a_source_fails_its_freshness_policy_once_its_next_version_is_overdue(environment):
    defs = build_definitions()
    policies = {
        key.to_user_string(): defs.resolve_assets_def(key).specs_by_key[key].freshness_policy for key in SOURCES
    }
    assert policies["news_articles"] == dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=30))
    with dg.instance_for_test() as instance:
        assert freshness(instance) == dict.fromkeys(policies, FreshnessState.UNKNOWN), "nothing loaded yet"

        instance.add_dynamic_partitions("news_articles_files", ["news_2026-11-20.json"])
        load = defs.resolve_job_def("load_news_articles")
        assert load.execute_in_process(instance=instance, partition_key="news_2026-11-20.json").success
        assert freshness(instance)["news_articles"] == FreshnessState.PASS

        with freeze_time(datetime.now(UTC) + timedelta(hours=30, minutes=1)):
            states = freshness(instance)
        assert states["news_articles"] == FreshnessState.FAIL, "no new version within 30 hours"
        assert states["court_records"] == FreshnessState.UNKNOWN
