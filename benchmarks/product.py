"""The product path: whole Dagster command lines, as users run them, next to a trivial project
and next to Dagster's own integrations of the peer tools.

    python benchmarks/product.py [--repeat 5]
    python benchmarks/product.py --rows [N] [--repeat 3] [--only harmonizer_duckdb,dlt_duckdb]

Every case is a whole `dagster` process started from here (this script imports neither dagster
nor the peer tools, so a case pays only for what its own command imports), with an instance
(DAGSTER_HOME with the embedded deploy/local/dagster.yaml) of its own whose storage and
partitions are made before the first timed run, and a fresh target each run: a new DuckDB file,
or its PostgreSQL database recreated (HARMONIZER_BENCH_POSTGRES_URL, see scratch.py). The cases
take turns, run after run, so a busy machine slows them alike; the median of --repeat runs is
kept. Peak RSS is that of the whole process tree: the sum over the tree, polled every 10 ms, or
the largest single process's high-water mark when that is higher. CPU seconds include the
processes a case starts (Sling's binary, DuckDB's CLI).

Without --rows, a 3-row file:
  materialize_harmonizer  `dagster asset materialize -m harmonizer_dagster --select
      business_registry,business_registry_published --partition three_rows.csv`: a 3-row file
      written, audited and published into a fresh DuckDB warehouse
  materialize_trivial     the same command on a one-asset project generated into the work
      folder (one @asset, the same dynamic partition, the in-process executor)
  ingest_landing          `dagster job execute -m harmonizer_dagster -j ingest_landing` over
      the shipped samples (four files of three sources) into a fresh DuckDB warehouse
Targets: materialize_harmonizer at most 1.3x materialize_trivial, and peak RSS at most 200 MiB.

With --rows N (200,000 when no N is given): the registry file of N generated rows plus
duplicates (benchmarks/data/registry_N.csv, made once, as pipeline.py makes it), loaded by one
`dagster asset materialize` into DuckDB (*_duckdb) and into PostgreSQL (*_postgres):
  harmonizer_*  this project's business_registry asset, the file's partition: the file copied
      into the landing folder of the case, its partition registered before the runs; hash,
      validate, deduplicate, stage, every check, publish
  dlt_*         a project generated into the work folder: one @dlt_assets asset (dagster-dlt),
      a dlt source yielding pyarrow batches of the file, write_disposition merge, primary key
      corp_number
  sling_*       a project generated likewise: one @sling_assets asset (dagster-sling), a Sling
      replication of the file, mode incremental, primary key corp_number
benchmarks/peers.py configures both peers, the same as pipeline.py's library-path cases, and
what Sling needs on a machine without downloads (the bench extra installs it). Targets, as
ratios peer seconds / ours: into DuckDB at least 1.25x dagster-dlt; into PostgreSQL at least
1.5x dagster-dlt and 0.8x dagster-sling.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from peers import DLT_ENVIRONMENT, sling_environment
from scratch import recreated_database, registry_file, scratch_database

REPO = Path(__file__).resolve().parent.parent
# What a user materializes to load a file: the staged asset and its publication.
PUBLISHED = "business_registry,business_registry_published"
SAMPLES = REPO / "harmonizer_dagster" / "samples"
DAGSTER = str(Path(sys.executable).parent / "dagster")
PARTITION = "three_rows.csv"
FILE_ROWS = 200_000
TRIVIAL_PROJECT = '''"""One asset and nothing else: what any Dagster run costs."""

import dagster as dg

files = dg.DynamicPartitionsDefinition(name="trivial_files")


@dg.asset(partitions_def=files)
def trivial(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"partition": context.partition_key})


defs = dg.Definitions(assets=[trivial], executor=dg.in_process_executor)
'''
DLT_PROJECT = '''"""One @dlt_assets asset: dlt merging the file of BENCH_FILE on corp_number into BENCH_TARGET_URL."""

import os
from pathlib import Path

import dagster as dg
from dagster_dlt import DagsterDltResource, dlt_assets
from peers import dlt_pipeline, registry_source


@dlt_assets(
    dlt_source=registry_source(Path(os.environ["BENCH_FILE"])),
    dlt_pipeline=dlt_pipeline(os.environ["BENCH_TARGET_URL"], Path.cwd() / "dlt"),
)
def registry(context: dg.AssetExecutionContext, dlt: DagsterDltResource):
    yield from dlt.run(context=context)


defs = dg.Definitions(assets=[registry], resources={"dlt": DagsterDltResource()}, executor=dg.in_process_executor)
'''
SLING_PROJECT = '''"""One @sling_assets asset: Sling replicating the file of BENCH_FILE, incremental on
corp_number, into BENCH_TARGET_URL."""

import os
from pathlib import Path

import dagster as dg
from dagster_sling import SlingConnectionResource, SlingResource, sling_assets
from peers import sling_connection, sling_replication


@sling_assets(replication_config=sling_replication(Path(os.environ["BENCH_FILE"])))
def registry(context: dg.AssetExecutionContext, sling: SlingResource):
    yield from sling.replicate(context=context)


target = SlingConnectionResource(name="TARGET", **sling_connection(os.environ["BENCH_TARGET_URL"]))
defs = dg.Definitions(
    assets=[registry], resources={"sling": SlingResource(connections=[target])}, executor=dg.in_process_executor
)
'''
RATIO_TARGET = 1.3
RSS_TARGET_MIB = 200
# Peer seconds / ours, at least; the peers' file cases by target.
PEER_TARGETS = {
    ("duckdb", "dlt"): 1.25,
    ("duckdb", "sling"): None,
    ("postgres", "dlt"): 1.5,
    ("postgres", "sling"): 0.8,
}
PEER_NAMES = {"dlt": "dagster-dlt", "sling": "dagster-sling"}


@dataclass
class Case:
    """One command: its `dagster` arguments, environment and folder (its working directory),
    the variable that names its target, and the PostgreSQL database it loads into (recreated
    before each run), when it does not load into a DuckDB file."""

    arguments: list[str]
    env: dict[str, str]
    folder: Path
    target: str = "HARMONIZER_WAREHOUSE_URL"
    database: str | None = None

    def fresh_run(self) -> dict[str, str]:
        """The environment of one run into a fresh target, with no staging or dlt state left."""
        for leftover in ("staging", "dlt"):
            shutil.rmtree(self.folder / leftover, ignore_errors=True)
        if self.database:
            return {**self.env, self.target: recreated_database(self.database)}
        duckdb_file = self.folder / "target.duckdb"
        for leftover in (duckdb_file, duckdb_file.with_suffix(".duckdb.wal")):
            leftover.unlink(missing_ok=True)
        return {**self.env, self.target: f"duckdb:///{duckdb_file}"}


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
    # A child's high-water mark starts at this process's own (kept across fork and exec): only
    # a higher one is the child's.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_peak = usage.ru_maxrss if usage.ru_maxrss > own else 0
    return seconds, usage.ru_utime + usage.ru_stime, max(peak / 2**20, child_peak / 1024)


def three_row_landing(folder: Path) -> Path:
    """A landing folder holding one 3-row file of the registry source."""
    source = folder / "business_registry"
    source.mkdir(parents=True)
    with (SAMPLES / "business_registry" / "registry_2026-Q3.csv").open(newline="") as handle:
        rows = [row for _, row in zip(range(4), csv.reader(handle), strict=False)]
    with (source / PARTITION).open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return folder


def file_landing(folder: Path, file: Path) -> Path:
    """A landing folder holding a copy of `file` as a file of the registry source."""
    (folder / "business_registry").mkdir(parents=True)
    shutil.copy(file, folder / "business_registry" / file.name)
    return folder


def instance_home(folder: Path, env: dict[str, str], partitions: str | None = None, partition: str = "") -> Path:
    """A DAGSTER_HOME with the embedded instance, its storage made and, given `partitions`,
    `partition` added to them."""
    folder.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", folder / "dagster.yaml")
    make = "import dagster as dg; instance = dg.DagsterInstance.get()"
    if partitions:
        make += f"; instance.add_dynamic_partitions({partitions!r}, [{partition!r}])"
    subprocess.run([sys.executable, "-c", make], env={**env, "DAGSTER_HOME": str(folder)}, check=True)
    return folder


def take_turns(cases: dict[str, Case], repeat: int) -> dict[str, tuple[float, float, float]]:
    """Runs the cases in turn, `repeat` times each, each run into a fresh target; prints their
    table and returns each case's medians (seconds, CPU seconds, peak RSS MiB)."""
    timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, case in cases.items():
            timings[name].append(measure([DAGSTER, *case.arguments], case.fresh_run(), case.folder))

    load = os.getloadavg()[0]
    print(f"{repeat} runs per case, medians; load average {load:.1f} on {os.cpu_count()} cores\n")
    print(f"{'case':<24} {'seconds':>8} {'min':>6} {'max':>6} {'CPU s':>6} {'peak RSS MiB':>13}")
    medians = {}
    for name, runs in timings.items():
        seconds = [s for s, _, _ in runs]
        medians[name] = tuple(statistics.median(figures) for figures in zip(*runs, strict=True))
        wall, cpu, rss = medians[name]
        print(f"{name:<24} {wall:>8.2f} {min(seconds):>6.2f} {max(seconds):>6.2f} {cpu:>6.2f} {rss:>13.0f}")
    return medians


def show(
    label: str, value: float, unit: str = "x", at_most: float | None = None, at_least: float | None = None
) -> None:
    """One line of the targets: the value, and the bound it is held to with ok or MISSED."""
    line = f"  {label:<46} {value:>6.2f} {unit:<3}"
    if at_most is not None:
        line += f" [<= {at_most:g}] {'ok' if value <= at_most else 'MISSED'}"
    if at_least is not None:
        line += f" [>= {at_least:g}] {'ok' if value >= at_least else 'MISSED'}"
    print(line)


def three_row_cases(work: Path, base: dict[str, str], harmonizer_env) -> dict[str, Case]:
    (work / "projects" / "trivial_project.py").write_text(TRIVIAL_PROJECT)
    landing = three_row_landing(work / "landing")
    samples = work / "samples"
    shutil.copytree(SAMPLES, samples)
    cases = {}
    for name, arguments, env, partitions in (
        (
            "materialize_harmonizer",
            ["asset", "materialize", "-m", "harmonizer_dagster", "--select", PUBLISHED],
            harmonizer_env(work / "materialize_harmonizer", landing),
            "business_registry_files",
        ),
        (
            "materialize_trivial",
            ["asset", "materialize", "-m", "trivial_project", "--select", "trivial"],
            {**base, "PYTHONPATH": str(work / "projects")},
            "trivial_files",
        ),
        (
            "ingest_landing",
            ["job", "execute", "-m", "harmonizer_dagster", "-j", "ingest_landing"],
            harmonizer_env(work / "ingest_landing", samples),
            None,
        ),
    ):
        folder = work / name
        home = instance_home(folder / "home", env, partitions, PARTITION)
        if partitions:
            arguments = [*arguments, "--partition", PARTITION]
        cases[name] = Case(arguments, {**env, "DAGSTER_HOME": str(home)}, folder)
    return cases


def three_row_targets(medians: dict[str, tuple[float, float, float]]) -> None:
    ours, trivial = medians.get("materialize_harmonizer"), medians.get("materialize_trivial")
    print("\ntargets:")
    if ours and trivial:
        show("3-row materialize vs trivial project, time", ours[0] / trivial[0], at_most=RATIO_TARGET)
        show("3-row materialize vs trivial project, CPU time", ours[1] / trivial[1])
    if ours:
        show("3-row materialize, peak RSS", ours[2], "MiB", at_most=RSS_TARGET_MIB)
    if "ingest_landing" in medians and trivial:
        show("ingest_landing over the samples vs trivial", medians["ingest_landing"][0] / trivial[0])


def file_cases(work: Path, base: dict[str, str], harmonizer_env, file: Path) -> dict[str, Case]:
    """The six cases of the registry file; each PostgreSQL case has a database named after it."""
    (work / "projects" / "dlt_project.py").write_text(DLT_PROJECT)
    (work / "projects" / "sling_project.py").write_text(SLING_PROJECT)
    peer_path = f"{work / 'projects'}{os.pathsep}{Path(__file__).resolve().parent}"
    cases = {}
    for target in ("duckdb", "postgres"):
        for tool in ("harmonizer", "dlt", "sling"):
            name = f"{tool}_{target}"
            folder = work / name
            if tool == "harmonizer":
                env = harmonizer_env(folder, file_landing(folder / "landing", file))
                home = instance_home(folder / "home", env, "business_registry_files", file.name)
                arguments = ["-m", "harmonizer_dagster", "--select", PUBLISHED, "--partition", file.name]
                variable = "HARMONIZER_WAREHOUSE_URL"
            else:
                env = {**base, "PYTHONPATH": peer_path, "BENCH_FILE": str(file)}
                env.update(DLT_ENVIRONMENT if tool == "dlt" else sling_environment(folder / "sling_home"))
                home = instance_home(folder / "home", env)
                key = "dlt_registry_registry" if tool == "dlt" else "registry"
                arguments = ["-m", f"{tool}_project", "--select", key]
                variable = "BENCH_TARGET_URL"
            database = f"harmonizer_product_{name}" if target == "postgres" else None
            env = {**env, "DAGSTER_HOME": str(home)}
            cases[name] = Case(["asset", "materialize", *arguments], env, folder, variable, database)
    return cases


def file_targets(medians: dict[str, tuple[float, float, float]]) -> None:
    print("\ntargets (peer seconds / ours):")
    for (target, tool), at_least in PEER_TARGETS.items():
        ours, peer = medians.get(f"harmonizer_{target}"), medians.get(f"{tool}_{target}")
        if ours and peer:
            where = "DuckDB" if target == "duckdb" else "PostgreSQL"
            show(f"into {where}: ours vs {PEER_NAMES[tool]}", peer[0] / ours[0], at_least=at_least)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows", type=int, nargs="?", const=FILE_ROWS, help=f"the registry file block, N rows ({FILE_ROWS:,} alone)"
    )
    parser.add_argument("--repeat", type=int, help="runs of each case; the median is kept (5, with --rows 3)")
    parser.add_argument("--only", help="comma-separated cases to run, e.g. harmonizer_postgres,sling_postgres")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data", help="where the file is kept")
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.rows else 5)

    work = Path(tempfile.mkdtemp(prefix="harmonizer_product_"))
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HARMONIZER_", "DAGSTER_", "AWS_")) and key != "PYTHONPATH"
    }
    base["PYTHONPATH"] = str(REPO)
    (work / "projects").mkdir()

    def harmonizer_env(folder: Path, landing: Path) -> dict[str, str]:
        return {**base, "HARMONIZER_LANDING_DIR": str(landing), "HARMONIZER_STAGING_DIR": str(folder / "staging")}

    def selected(cases: dict[str, Case]) -> dict[str, Case]:
        return {name: case for name, case in cases.items() if not args.only or name in args.only.split(",")}

    try:
        if args.rows is None:
            three_row_targets(take_turns(selected(three_row_cases(work, base, harmonizer_env)), repeat))
            return
        file = registry_file(args.data_dir, args.rows)
        cases = selected(file_cases(work, base, harmonizer_env, file))
        print(f"{file.name}: {file.stat().st_size / 2**20:.0f} MiB, {args.rows:,} generated rows (plus duplicates)")
        with contextlib.ExitStack() as databases:
            for case in cases.values():
                if case.database:
                    databases.enter_context(scratch_database(case.database))
            file_targets(take_turns(cases, repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
