"""The product path: whole Dagster command lines, as users run them, next to a trivial project.

    python benchmarks/product.py [--repeat 5]

Cases, each a whole `dagster` process started from here (this script imports neither dagster
nor the project, so a case pays only for what its own command imports):
  materialize_harmonizer  `dagster asset materialize -m harmonizer_dagster --select
      business_registry --partition three_rows.csv`: a 3-row file into a fresh DuckDB warehouse
  materialize_trivial     the same command on a one-asset project generated into the work
      folder (one @asset, the same dynamic partition, the in-process executor)
  ingest_landing          `dagster job execute -m harmonizer_dagster -j ingest_landing` over
      the shipped samples (four files of three sources) into a fresh DuckDB warehouse
Each case has an instance (DAGSTER_HOME with the embedded deploy/local/dagster.yaml) of its own
whose storage and partitions are made before the first timed run. The cases take turns, run
after run, so a busy machine slows them alike; the median of --repeat runs is kept. Peak RSS is
that of the whole process tree: the sum over the tree, polled every 10 ms, or the largest single
process's high-water mark when that is higher.
Targets: materialize_harmonizer at most 1.3x materialize_trivial, and peak RSS at most 200 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "harmonizer_dagster" / "samples"
DAGSTER = str(Path(sys.executable).parent / "dagster")
PARTITION = "three_rows.csv"
TRIVIAL_PROJECT = '''"""One asset and nothing else: what any Dagster run costs."""

import dagster as dg

files = dg.DynamicPartitionsDefinition(name="trivial_files")


@dg.asset(partitions_def=files)
def trivial(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"partition": context.partition_key})


defs = dg.Definitions(assets=[trivial], executor=dg.in_process_executor)
'''
RATIO_TARGET = 1.3
RSS_TARGET_MIB = 200


def measure(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """Runs the command to its end: its seconds, CPU seconds and the peak RSS (MiB) of its
    process tree. CPU seconds move less than wall time when other work shares the machine."""
    log = cwd / "last_run.log"
    started = time.perf_counter()
    with log.open("wb") as output:
        child = subprocess.Popen(command, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
    process = psutil.Process(child.pid)
    peak = 0
    while True:
        # wait4 reaps the child with its own rusage: the high-water mark of the largest process
        # of the tree, which polling may miss between two samples.
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(psutil.NoSuchProcess):
            peak = max(peak, sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]))
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, max(peak / 2**20, usage.ru_maxrss / 1024)


def three_row_landing(folder: Path) -> Path:
    """A landing folder holding one 3-row file of the registry source."""
    source = folder / "business_registry"
    source.mkdir(parents=True)
    with (SAMPLES / "business_registry" / "registry_2026-Q3.csv").open(newline="") as handle:
        rows = [row for _, row in zip(range(4), csv.reader(handle), strict=False)]
    with (source / PARTITION).open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return folder


def instance_home(folder: Path, partitions: str, env: dict[str, str]) -> Path:
    """A DAGSTER_HOME with the embedded instance, its storage made and the partition added."""
    folder.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", folder / "dagster.yaml")
    add = f"import dagster as dg; dg.DagsterInstance.get().add_dynamic_partitions({partitions!r}, [{PARTITION!r}])"
    subprocess.run([sys.executable, "-c", add], env={**env, "DAGSTER_HOME": str(folder)}, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case; the median is kept")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="harmonizer_product_"))
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HARMONIZER_", "DAGSTER_", "AWS_")) and key != "PYTHONPATH"
    }
    base["PYTHONPATH"] = str(REPO)
    (work / "trivial").mkdir()
    (work / "trivial" / "trivial_project.py").write_text(TRIVIAL_PROJECT)
    landing = three_row_landing(work / "landing")
    samples = work / "samples"
    shutil.copytree(SAMPLES, samples)

    def harmonizer_env(case: str, landing_dir: Path) -> dict[str, str]:
        return {
            **base,
            "HARMONIZER_LANDING_DIR": str(landing_dir),
            "HARMONIZER_STAGING_DIR": str(work / case / "staging"),
        }

    cases = {
        "materialize_harmonizer": (
            ["asset", "materialize", "-m", "harmonizer_dagster", "--select", "business_registry"],
            harmonizer_env("materialize_harmonizer", landing),
            "business_registry_files",
        ),
        "materialize_trivial": (
            ["asset", "materialize", "-m", "trivial_project", "--select", "trivial"],
            {**base, "PYTHONPATH": str(work / "trivial")},
            "trivial_files",
        ),
        "ingest_landing": (
            ["job", "execute", "-m", "harmonizer_dagster", "-j", "ingest_landing"],
            harmonizer_env("ingest_landing", samples),
            "",
        ),
    }
    commands = {}
    for case, (arguments, env, partitions) in cases.items():
        folder = work / case
        home = instance_home(folder / "home", partitions or "unused", env)
        if partitions:
            arguments = [*arguments, "--partition", PARTITION]
        commands[case] = ([DAGSTER, *arguments], {**env, "DAGSTER_HOME": str(home)}, folder)

    timings: dict[str, list[tuple[float, float, float]]] = {case: [] for case in commands}
    for run in range(args.repeat):
        for case, (command, env, folder) in commands.items():
            # A fresh warehouse and staging folder: every run is a first load.
            shutil.rmtree(folder / "staging", ignore_errors=True)
            warehouse = f"duckdb:///{folder / f'warehouse_{run}.duckdb'}"
            timings[case].append(measure(command, {**env, "HARMONIZER_WAREHOUSE_URL": warehouse}, folder))

    load = os.getloadavg()[0]
    print(f"{args.repeat} runs per case, medians; load average {load:.1f} on {os.cpu_count()} cores\n")
    print(f"{'case':<24} {'seconds':>8} {'min':>6} {'max':>6} {'CPU s':>6} {'peak RSS MiB':>13}")
    medians = {}
    for case, runs in timings.items():
        seconds = [s for s, _, _ in runs]
        medians[case] = tuple(statistics.median(figures) for figures in zip(*runs, strict=True))
        wall, cpu, rss = medians[case]
        print(f"{case:<24} {wall:>8.2f} {min(seconds):>6.2f} {max(seconds):>6.2f} {cpu:>6.2f} {rss:>13.0f}")

    ratio = medians["materialize_harmonizer"][0] / medians["materialize_trivial"][0]
    cpu = medians["materialize_harmonizer"][1] / medians["materialize_trivial"][1]
    rss = medians["materialize_harmonizer"][2]
    ingest = medians["ingest_landing"][0] / medians["materialize_trivial"][0]
    print("\ntargets:")
    print(
        f"  {'3-row materialize vs trivial project, time':<46} {ratio:>6.2f} x   [<= {RATIO_TARGET}] "
        f"{'ok' if ratio <= RATIO_TARGET else 'MISSED'}"
    )
    print(f"  {'3-row materialize vs trivial project, CPU time':<46} {cpu:>6.2f} x")
    print(
        f"  {'3-row materialize, peak RSS':<46} {rss:>6.0f} MiB [<= {RSS_TARGET_MIB}] "
        f"{'ok' if rss <= RSS_TARGET_MIB else 'MISSED'}"
    )
    print(f"  {'ingest_landing over the samples vs trivial':<46} {ingest:>6.2f} x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
