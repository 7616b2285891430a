"""The fleet, proven end to end on this machine: runs go to the Pi that serves their source,
queue limits hold while 20 runs drain, a backfill launched through the webserver's GraphQL
API (the call the UI's backfill button makes), of the source's job or of its asset, loads its
files in one run on the right Pi, a
restarted Pi gets runs again, a run whose Pi lost power is failed and retried whole, and the
central webserver's UI shows what the Pis serve."""

import collections
import json
import os
import shutil
import time

import dagster as dg
import psutil
import psycopg
import pytest

from harmonizer_dagster.core.samples import write_registry_csv
from harmonizer_dagster_tests.conftest import SAMPLES_DIR
from harmonizer_dagster_tests.fleet import Fleet, wait_for
from harmonizer_dagster_tests.inbox import smtp_server
from harmonizer_dagster_tests.ui import PARTITION, check_source_pages

pytestmark = pytest.mark.postgres


def mutation(field: str, argument: str, params_type: str, success: str) -> str:
    """A GraphQL mutation as the UI sends it, taking `$params` and answering its success fields."""
    return f"""
mutation($params: {params_type}!) {{
  {field}({argument}: $params) {{
    __typename
    {success}
    ... on PythonError {{ message }}
  }}
}}"""


LAUNCHED = "... on LaunchRunSuccess { run { runId } }"
LAUNCH = mutation("launchRun", "executionParams", "ExecutionParams", LAUNCHED)
REEXECUTE = mutation("launchRunReexecution", "reexecutionParams", "ReexecutionParams", LAUNCHED)
BACKFILL = mutation(
    "launchPartitionBackfill", "backfillParams", "LaunchBackfillParams", "... on LaunchBackfillSuccess { backfillId }"
)
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@pytest.fixture(scope="module")
def fleet(postgres_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    landing = root / "landing"
    shutil.copytree(SAMPLES_DIR, landing)
    with smtp_server() as (inbox, smtp_port):
        running = Fleet(root, postgres_url, landing, smtp_port).start()
        running.inbox = inbox
        saved = {k: os.environ.get(k) for k in running.env if k.startswith(("DAGSTER_", "HARMONIZER_"))}
        os.environ.update({k: running.env[k] for k in saved})
        try:
            with dg.DagsterInstance.from_config(str(running.home)) as instance:
                running.instance = instance
                yield running
        finally:
            running.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def launch(fleet, location: str, source: str, partition: str, from_asset_page: bool = False) -> str:
    """Launches one file's load as the UI does: from the source's job, or from the asset's page
    (Dagster's implicit asset job, which carries no tags of its own)."""
    fleet.instance.add_dynamic_partitions(f"{source}_files", [partition])
    selector = {"repositoryLocationName": location, "repositoryName": "__repository__", "jobName": f"load_{source}"}
    if from_asset_page:
        selector |= {"jobName": "__ASSET_JOB", "assetSelection": [{"path": [source]}]}
    result = fleet.graphql(
        LAUNCH,
        {
            "params": {
                "selector": selector,
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
            }
        },
    )["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def finished(fleet, run_ids) -> list[dg.DagsterRun]:
    runs = [fleet.instance.get_run_by_id(run_id) for run_id in run_ids]
    return runs if all(run.status in DONE for run in runs) else []


def without_first_records(path, count: int) -> str:
    """The file less its first records: distinct bytes for every copy."""
    if path.suffix == ".json":
        return json.dumps(json.loads(path.read_text())[count:])
    lines = path.read_text().splitlines(keepends=True)
    header = lines[:1] if path.suffix == ".csv" else []
    return "".join(header + lines[len(header) + count :])


def worker_ancestry(fleet, run_id: str) -> list[int] | None:
    """The pids above the run's worker process, while it runs."""
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if run_id in " ".join(process.info["cmdline"] or []):
                return [parent.pid for parent in process.parents()]
        except psutil.Error:
            continue
    return None


def test_a_run_executes_in_the_process_tree_of_the_pi_serving_its_source(fleet):
    for location, source, partition in (
        ("pi-a", "business_registry", "registry_2026-Q3.csv"),
        ("pi-b", "court_records", "court_2026-11-15.ndjson"),
    ):
        run_id = launch(fleet, location, source, partition)
        ancestry = wait_for(lambda r=run_id: worker_ancestry(fleet, r), 120, f"the run worker of {run_id}", 0.05)
        assert fleet.processes[location].pid in ancestry, f"{source} ran outside {location}'s code server"
        other = "pi-b" if location == "pi-a" else "pi-a"
        assert fleet.processes[other].pid not in ancestry
        (run,) = wait_for(lambda r=run_id: finished(fleet, [r]), 180, f"run {run_id}")
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["harmonizer/host"] == location


def test_twenty_queued_runs_respect_the_source_and_host_limits(fleet):
    jobs = []
    for source, file, count in (
        ("business_registry", "registry_2026-Q3.csv", 6),
        ("court_records", "court_2026-11-15.ndjson", 7),
        ("news_articles", "news_2026-11-20.json", 7),
    ):
        original = fleet.landing / source / file
        for number in range(count):
            copy = original.with_name(f"limits-{number}-{file}")
            copy.write_text(without_first_records(original, number + 1))
            jobs.append((("pi-a" if source == "business_registry" else "pi-b"), source, copy.name))
    runs, peak_per_source, peak_per_host = drain(fleet, [launch(fleet, *job) for job in jobs])
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 20
    assert max(peak_per_source.values()) == 1, peak_per_source
    assert max(peak_per_host.values()) <= 2, peak_per_host


def drain(fleet, run_ids: list[str]) -> tuple[list[dg.DagsterRun], collections.Counter, collections.Counter]:
    """Waits for the runs to finish, sampling how many ran at once per source and per host."""
    peak_per_source: collections.Counter = collections.Counter()
    peak_per_host: collections.Counter = collections.Counter()

    def sample():
        started = fleet.instance.get_runs(dg.RunsFilter(run_ids=run_ids, statuses=[dg.DagsterRunStatus.STARTED]))
        for key, peaks in (("source", peak_per_source), ("harmonizer/host", peak_per_host)):
            for value, count in collections.Counter(run.tags.get(key) for run in started).items():
                peaks[value] = max(peaks[value], count)
        return finished(fleet, run_ids)

    return wait_for(sample, 600, f"{len(run_ids)} runs to drain", 0.1), peak_per_source, peak_per_host


def test_runs_launched_from_the_asset_page_are_held_by_the_source_limit(fleet):
    """Dagster's implicit asset job has no tags: its runs inherit the asset's source and host."""
    original = fleet.landing / "business_registry" / "registry_2026-Q3.csv"
    partitions = []
    for number in range(3):
        copy = original.with_name(f"asset-page-{number}-{original.name}")
        copy.write_text(without_first_records(original, 10 + number))
        partitions.append(copy.name)
    run_ids = [launch(fleet, "pi-a", "business_registry", p, from_asset_page=True) for p in partitions]
    runs, peak_per_source, _ = drain(fleet, run_ids)
    assert {run.job_name for run in runs} == {"__ASSET_JOB"}
    assert all(run.tags["source"] == "business_registry" and run.tags["harmonizer/host"] == "pi-a" for run in runs)
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 3
    assert peak_per_source == {"business_registry": 1}


def test_a_backfill_of_the_source_job_through_graphql_runs_its_files_together_on_the_right_pi(fleet):
    source = "news_articles"
    original = fleet.landing / source / "news_2026-11-20.json"
    records = json.loads(original.read_text())
    partitions = []
    for day in (21, 22, 23):
        name = f"news_2026-11-{day}.json"
        (fleet.landing / source / name).write_text(json.dumps(records[:day]))
        partitions.append(name)
    fleet.instance.add_dynamic_partitions(f"{source}_files", partitions)
    selector = {
        "partitionSetName": f"load_{source}_partition_set",
        "repositorySelector": {"repositoryLocationName": "pi-b", "repositoryName": "__repository__"},
    }
    # The asset job's backfill follows its assets' backfill policy: one run for the range.
    run = backfill_in_one_run(fleet, {"selector": selector, "partitionNames": partitions}, partitions)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    loaded = completed_loads(fleet, partitions)
    # Two of the records are rejected (a missing headline, a bad timestamp).
    assert loaded == [(name, day, day - 2) for name, day in zip(partitions, (21, 22, 23), strict=True)]


def test_an_asset_backfill_through_graphql_loads_its_files_in_one_run_on_the_right_pi(fleet):
    """The UI's backfill of the source asset (and its published versions): the backfill policy
    hands one run the whole range, each file is its own partition, and a bad file fails only
    itself."""
    source = "news_articles"
    records = json.loads((fleet.landing / source / "news_2026-11-20.json").read_text())
    partitions = [f"news_2026-12-{day:02d}.json" for day in (1, 2, 3, 4)]
    for day, name in zip((5, 6, 7), (partitions[0], partitions[1], partitions[3]), strict=True):
        (fleet.landing / source / name).write_text(json.dumps(records[:day]))
    (fleet.landing / source / partitions[2]).write_text('[{"headline": "cut off')
    fleet.instance.add_dynamic_partitions(f"{source}_files", partitions)
    selection = [{"path": [source]}, {"path": [f"{source}_published"]}]
    run = backfill_in_one_run(fleet, {"assetSelection": selection, "partitionNames": partitions}, partitions)
    assert run.status == dg.DagsterRunStatus.FAILURE, "the cut-off file fails the run"
    good = {partitions[0], partitions[1], partitions[3]}
    assert fleet.instance.get_materialized_partitions(dg.AssetKey(source)) & set(partitions) == good
    assert fleet.instance.get_materialized_partitions(dg.AssetKey(f"{source}_published")) & set(partitions) == good
    # One of the first five records is rejected.
    assert completed_loads(fleet, partitions) == [(partitions[0], 5, 4), (partitions[1], 6, 5), (partitions[3], 7, 6)]


def backfill_in_one_run(fleet, params: dict, partitions: list[str]) -> dg.DagsterRun:
    """Launches a backfill as the UI does and returns its one run, once the daemon has launched
    its runs and seen them finish: the whole range, on pi-b, which serves the news."""
    result = fleet.graphql(BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    backfill_id = result["backfillId"]

    def finished_runs():
        runs = fleet.instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        # An asset backfill stays REQUESTED until every run it needs has finished.
        requested = fleet.instance.get_backfill(backfill_id).status.value == "REQUESTED"
        return runs if runs and not requested and all(run.status in DONE for run in runs) else []

    try:
        (run,) = wait_for(finished_runs, 300, f"backfill {backfill_id}")
    except AssertionError:
        seen = [(r.job_name, r.status, dict(r.tags)) for r in fleet.instance.get_runs(limit=10)]
        raise AssertionError(f"backfill {backfill_id} did not finish in one run; latest runs: {seen}") from None
    ranged = (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"])
    assert ranged == (partitions[0], partitions[-1])
    assert run.tags["harmonizer/host"] == "pi-b"
    return run


def completed_loads(fleet, partitions: list[str]) -> list[tuple[str, int, int]]:
    with psycopg.connect(fleet.env["HARMONIZER_WAREHOUSE_URL"]) as conn:
        return conn.execute(
            "SELECT partition_key, records_in_file, records_imported FROM harmonizer.sources "
            "WHERE status = 'completed' AND partition_key = ANY(%s) ORDER BY partition_key",
            (partitions,),
        ).fetchall()


def test_a_restarted_code_server_gets_runs_again_without_a_reload(fleet):
    fleet.kill("pi-b")
    fleet.start_pi("pi-b")
    run_id = launch(fleet, "pi-b", "news_articles", "news_2026-11-21.json")
    ancestry = wait_for(lambda: worker_ancestry(fleet, run_id), 120, "the run worker", 0.05)
    assert fleet.processes["pi-b"].pid in ancestry, "the run went to the restarted code server"
    (run,) = wait_for(lambda: finished(fleet, [run_id]), 180, "the run")
    assert run.status == dg.DagsterRunStatus.SUCCESS


def step_started(fleet, run_id: str, op_suffix: str) -> bool:
    records = fleet.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    return any(record.event_log_entry.step_key.endswith(op_suffix) for record in records)


def load_state(fleet, partition: str) -> dict:
    """What the warehouse holds of one file: its registry rows, and the rows and dead letters it wrote."""
    with psycopg.connect(fleet.env["HARMONIZER_WAREHOUSE_URL"]) as conn:
        versions = conn.execute(
            "SELECT source_id, status, file_hash, records_in_file, records_imported, records_failed, "
            "records_inserted, records_updated FROM harmonizer.sources "
            "WHERE source_type = 'business_registry' AND partition_key = %s",
            (partition,),
        ).fetchall()
        hashes = [version[2] for version in versions]
        (rows,) = conn.execute(
            "SELECT count(*) FROM harmonizer.business_registry WHERE _file_hash = ANY(%s)", (hashes,)
        ).fetchone()
        (duplicate_keys,) = conn.execute(
            "SELECT count(*) - count(DISTINCT corp_number) FROM harmonizer.business_registry"
        ).fetchone()
        (dead_letters,) = conn.execute(
            "SELECT count(*) FROM harmonizer.failed_records WHERE source_id = ANY(%s)",
            ([version[0] for version in versions],),
        ).fetchone()
    return {"versions": versions, "rows": rows, "duplicate_keys": duplicate_keys, "dead_letters": dead_letters}


def lose_power_mid_stage(fleet, partition: str, seed: int) -> tuple[str, dict, float]:
    """Loads a large registry file on pi-a and kills the Pi once the stage step has begun."""
    expected = write_registry_csv(fleet.landing / "business_registry" / partition, 400_000, seed=seed)
    run_id = launch(fleet, "pi-a", "business_registry", partition)
    wait_for(lambda: step_started(fleet, run_id, "_stage"), 300, "the stage step to start", 0.05)
    fleet.kill("pi-a")  # its code server and every run worker under it
    killed_at = time.time()
    assert fleet.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    state = load_state(fleet, partition)
    (version,) = state["versions"]
    # One transaction per file: either the whole file is in, or none of it.
    assert state["rows"] == (version[6] + version[7] if version[1] == "completed" else 0), state
    return run_id, expected, killed_at


def marked_failed(fleet, run_id: str, killed_at: float, bound_seconds: float, reason: str) -> None:
    (run,) = wait_for(lambda: finished(fleet, [run_id]), 120, "the lost run to be marked failed")
    detected_after = time.time() - killed_at
    assert run.status == dg.DagsterRunStatus.FAILURE
    (failure,) = fleet.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    assert reason in failure.event_log_entry.message
    assert detected_after < bound_seconds, f"the lost run was noticed only after {detected_after:.0f}s"


def assert_loaded_whole(fleet, partition: str, expected: dict) -> None:
    state = load_state(fleet, partition)
    (version,) = state["versions"]
    assert version[1] == "completed"
    assert (version[3], version[4], version[5]) == (
        expected["records_in_file"],
        expected["records_imported"],
        expected["records_failed"],
    )
    assert state["rows"] == version[6] + version[7] > 0
    assert state["duplicate_keys"] == 0
    assert state["dead_letters"] == expected["records_failed"]


def test_a_pi_rebooting_mid_run_fails_the_run_and_the_automatic_retry_loads_the_file_whole(fleet):
    partition = "registry_2027-Q1.csv"
    run_id, expected, killed_at = lose_power_mid_stage(fleet, partition, seed=2027)
    time.sleep(3)
    fleet.start_pi("pi-a")  # power is back; systemd starts the code server again
    # Its code server answers without the run: noticed at the next monitoring poll.
    marked_failed(fleet, run_id, killed_at, 60, "no longer runs it")

    def retry_done():
        retries = fleet.instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))
        return retries if retries and retries[0].status in DONE else []

    (retry,) = wait_for(retry_done, 300, "the automatic retry")
    assert retry.status == dg.DagsterRunStatus.SUCCESS
    assert retry.tags["dagster/partition"] == partition
    assert_loaded_whole(fleet, partition, expected)


def test_a_pi_down_for_good_fails_its_run_within_the_unreachable_timeout(fleet):
    partition = "registry_2027-Q2.csv"
    run_id, expected, killed_at = lose_power_mid_stage(fleet, partition, seed=2028)
    timeout = fleet.config["run_launcher"]["config"]["unreachable_timeout_seconds"]
    marked_failed(fleet, run_id, killed_at, timeout + 30, "unreachable")
    # The Pi's own sensors are down with it: the central location announces the failure.
    alert = wait_for(lambda: [m for _, m in fleet.inbox.messages if run_id in m.get_content()], 90, "the alert")
    assert alert[0]["Subject"] == "[harmonizer] run failed: load_business_registry"
    # Once the Pi is back, the UI's "re-execute from failure" completes the file.
    fleet.start_pi("pi-a")
    wait_for(fleet._locations_loaded, 120, "pi-a to be loaded again")
    result = fleet.graphql(REEXECUTE, {"params": {"parentRunId": run_id, "strategy": "FROM_FAILURE"}})
    payload = result["launchRunReexecution"]
    assert payload["__typename"] == "LaunchRunSuccess", payload
    (rerun,) = wait_for(lambda: finished(fleet, [payload["run"]["runId"]]), 300, "the re-execution")
    assert rerun.status == dg.DagsterRunStatus.SUCCESS
    assert_loaded_whole(fleet, partition, expected)


def test_the_central_ui_shows_a_pis_asset_with_its_ops_metadata_and_checks(fleet):
    registry = dg.AssetRecordsFilter(asset_key=dg.AssetKey("business_registry"), asset_partitions=[PARTITION])
    if not fleet.instance.fetch_materializations(registry, limit=1).records:
        run_id = launch(fleet, "pi-a", "business_registry", PARTITION)
        (run,) = wait_for(lambda: finished(fleet, [run_id]), 180, "the registry load")
        assert run.status == dg.DagsterRunStatus.SUCCESS
    check_source_pages(f"http://127.0.0.1:{fleet.ports['webserver']}", "pi-a", "fleet-ui")
