"""The landing sensors at scale: an idle tick over many landed files, and a drain of many small
files through the real daemon.

    python benchmarks/landing.py idle --files 100000
    python benchmarks/landing.py drain --files 1000
    python benchmarks/landing.py backfill --files 1000
    python benchmarks/landing.py backfill --files 100 --per-run 1   # the peer: one run per file

idle   creates the files in a temporary landing folder, brings the sensor's cursor to the state
       where every file is handled, then times the folder sensor's tick (median of 5) and prints
       the cursor's size. Targets: a tick <= 1 s, a cursor <= 100 KB.
drain  starts `dagster-daemon run` on a temporary SQLite instance (as `dagster dev` runs it),
       drops that many 3-row files at once into a DuckDB-backed landing folder, and prints the
       seconds until every file's rows are in the warehouse and the last run has ended, with the
       number of runs the sensor started and when each started and how long it took. Target:
       1,000 files within 2 minutes.
backfill  the same daemon with the sensors off: registers that many 3-row files as partitions,
       submits an asset backfill of the source and its published versions over all of them (what
       the UI's "Materialize" of a partition selection does), and prints the seconds until the
       backfill is done, with its runs. --per-run sets HARMONIZER_RUN_MAX_FILES (default 1,000);
       1 is one run per file, as every backfill ran before the assets had a backfill policy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).parent.parent
sys.path.insert(0, str(REPO))
SOURCE = "business_registry"


def idle(count: int) -> None:
    import dagster as dg

    from harmonizer_dagster.core.landing import ScanState, scan_folder
    from harmonizer_dagster.orchestration.resources import LandingZone
    from harmonizer_dagster.orchestration.sensors import build_folder_sensor
    from harmonizer_dagster_tests.test_sensors import drop_small_files

    with tempfile.TemporaryDirectory() as root:
        drop = Path(root) / "drop"
        folder = drop / SOURCE
        folder.mkdir(parents=True)
        started = time.perf_counter()
        for start in range(0, count, 1000):  # 1,000 files a sub-folder, as a feed of daily folders
            (folder / f"day{start // 1000:04d}").mkdir()
            drop_small_files(folder / f"day{start // 1000:04d}", min(1000, count - start), start)
        print(f"created {count} files in {time.perf_counter() - started:.1f} s")
        listing = scan_folder(drop, SOURCE)
        state = ScanState()
        while True:  # every file seen twice and handled, as the ticks that loaded them leave it
            scan = state.advance(listing)
            state = scan.finish()
            if not scan.ready and not scan.fresh and not scan.overflow:
                break
        cursor = state.dump()
        os.environ["HARMONIZER_SOURCES"] = SOURCE
        from harmonizer_dagster.core.settings import current
        from harmonizer_dagster.core.spec import load_specs

        [spec] = [s for s in load_specs(Path(current("HARMONIZER_SOURCES_DIR"))) if s.name == SOURCE]
        sensor = build_folder_sensor(spec, None, 10, dg.DefaultSensorStatus.RUNNING)
        zone = LandingZone(landing_dir=str(drop), staging_dir=str(Path(root) / "staging"))
        timings = []
        with dg.instance_for_test() as instance:
            for _ in range(5):
                context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"landing": zone})
                started = time.perf_counter()
                result = sensor(context)
                timings.append(time.perf_counter() - started)
                assert not result.run_requests, "an idle tick requests nothing"
                cursor = result.cursor
        print(f"idle tick over {count} files: {statistics.median(timings):.3f} s (median of 5)")
        print(f"cursor: {len(cursor.encode())} bytes")


def daemon_setup(root: Path, **settings: str) -> tuple[dict[str, str], Path, Path, Path]:
    """A SQLite instance, landing folder and DuckDB warehouse under `root`: the daemon's
    environment, DAGSTER_HOME, the source's landing folder and the warehouse file."""
    import dagster as dg

    home, drop = root / "dagster_home", root / "drop"
    for folder in (home, drop / SOURCE):
        folder.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)):
        pass
    warehouse = root / "warehouse.duckdb"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HARMONIZER_SOURCES": SOURCE,
        "HARMONIZER_LANDING_DIR": str(drop),
        "HARMONIZER_STAGING_DIR": str(root / "staging"),
        "HARMONIZER_WAREHOUSE_URL": f"duckdb:///{warehouse}",
        "PYTHONPATH": str(REPO),
        **settings,
    }
    return env, home, drop / SOURCE, warehouse


@contextlib.contextmanager
def running_daemon(root: Path, env: dict[str, str]) -> Iterator[None]:
    """`dagster-daemon run` in a process group of its own, stopped with its children."""
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
        env=env,
        cwd=root,
        stdout=(root / "daemon.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


def loaded_files(warehouse: Path) -> int | None:
    """How many file versions the warehouse holds as completed; None while a run holds it."""
    import duckdb

    if not warehouse.exists():
        return 0
    try:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return con.execute("SELECT count(*) FROM harmonizer.sources WHERE status = 'completed'").fetchone()[0]
    except duckdb.Error:
        return None


def drain(count: int, timeout: float) -> None:
    import dagster as dg

    from harmonizer_dagster_tests.test_sensors import drop_small_files

    root = Path(tempfile.mkdtemp(prefix="drain-"))
    env, home, folder, warehouse = daemon_setup(root)
    incoming = root / "incoming"
    incoming.mkdir()
    with running_daemon(root, env):
        names = drop_small_files(incoming, count)
        time.sleep(15)  # the daemon and its code server start before the drop, as in production
        dropped = time.perf_counter()
        for name in names:  # a rename is atomic: the files appear at once, complete
            (incoming / name).rename(folder / name)
        while time.perf_counter() - dropped < timeout:
            time.sleep(2)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                runs = instance.get_runs(dg.RunsFilter(job_name=f"load_{SOURCE}_files"))
            if runs and all(run.is_finished for run in runs) and (loaded_files(warehouse) or 0) >= count:
                failed = sum(run.status != dg.DagsterRunStatus.SUCCESS for run in runs)
                print(
                    f"drain of {count} files: {time.perf_counter() - dropped:.1f} s, {len(runs)} run(s), "
                    f"{failed} failed"
                )
                print_runs(home, time.time() - (time.perf_counter() - dropped))
                return
        print(f"drain of {count} files: not done after {timeout:.0f} s (see {root / 'daemon.log'})")


def backfill(count: int, per_run: int, timeout: float) -> None:
    import uuid

    import dagster as dg
    from dagster._core.execution.backfill import PartitionBackfill

    from harmonizer_dagster_tests.test_sensors import drop_small_files

    root = Path(tempfile.mkdtemp(prefix="backfill-"))
    env, home, folder, warehouse = daemon_setup(
        root, HARMONIZER_AUTOMATION="off", HARMONIZER_RUN_MAX_FILES=str(per_run)
    )
    os.environ.update(env)
    from harmonizer_dagster.definitions import build_definitions

    names = drop_small_files(folder, count)
    with running_daemon(root, env):
        time.sleep(15)  # the daemon and its code server start first, as in production
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions(f"{SOURCE}_files", names)
            started = time.perf_counter()
            submitted = PartitionBackfill.from_asset_partitions(
                backfill_id=uuid.uuid4().hex[:8],
                asset_graph=build_definitions().resolve_asset_graph(),
                partition_names=names,
                asset_selection=[dg.AssetKey(SOURCE), dg.AssetKey(f"{SOURCE}_published")],
                backfill_timestamp=time.time(),
                tags={},
                dynamic_partitions_store=instance,
                all_partitions=False,
                title=None,
                description=None,
                run_config=None,
            )
            instance.add_backfill(submitted)
            while time.perf_counter() - started < timeout:
                time.sleep(2)
                status = instance.get_backfill(submitted.backfill_id).status.value
                runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": submitted.backfill_id}))
                if status != "REQUESTED" and runs and all(r.dagster_run.is_finished for r in runs):
                    print(
                        f"backfill of {count} files: {time.perf_counter() - started:.1f} s to {status}, "
                        f"{len(runs)} run(s), {loaded_files(warehouse)} files loaded"
                    )
                    took = [(r.end_time or 0) - (r.start_time or 0) for r in runs]
                    print(f"  runs took {sum(took):.1f} s together, {statistics.median(took):.1f} s each (median)")
                    for record, seconds in list(zip(runs, took, strict=True))[:10]:
                        tags = record.dagster_run.tags
                        span = tags.get("dagster/partition") or "...".join(
                            tags[f"dagster/asset_partition_range_{end}"] for end in ("start", "end")
                        )
                        print(f"  run {span}: {record.dagster_run.status.value}, took {seconds:.1f} s")
                    return
        print(f"backfill of {count} files: not done after {timeout:.0f} s (see {root / 'daemon.log'})")


def print_runs(home: Path, dropped_at: float) -> None:
    """Where a drain's time went: each run's files, when it started after the drop, and how long
    it took (the gaps between runs are the queue's and the launch's)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name=f"load_{SOURCE}_files"))
    for record in sorted(records, key=lambda r: r.start_time or 0):
        config = record.dagster_run.run_config["ops"][f"{SOURCE}_files_to_load"]["config"]
        started, ended = record.start_time or 0, record.end_time or 0
        print(
            f"  run of {len(config['partition_keys'])} files: started {started - dropped_at:.1f} s after the drop, "
            f"took {ended - started:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["idle", "drain", "backfill"])
    parser.add_argument("--files", type=int)
    parser.add_argument("--per-run", type=int, default=1000, help="backfill: files a run takes at most")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if args.case == "idle":
        idle(args.files or 100_000)
    elif args.case == "drain":
        drain(args.files or 1_000, args.timeout)
    else:
        backfill(args.files or 1_000, args.per_run, args.timeout)


if __name__ == "__main__":
    main()
