"""The four steps that write a file version: hash, validate, deduplicate, stage.

A batch is read once and flows through one plan: learned rules, every pandera check, then the
harmonized values and row hash of the rows that pass (validate). What needs the whole file
comes after: `unique` checks and malformed lines (end of validate), which duplicate of a
natural key wins (deduplicate), and the version written to the warehouse's stage with its
issues (stage). Auditing and publishing it are `publishing.py`'s.

Each step reads the previous step's staged output from disk and writes its own, so any
step can be re-run alone (Dagster's "re-execute from failure") and a killed step resumes
from its last completed batch. Nothing here knows about Dagster.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from harmonizer_dagster.core import staging
from harmonizer_dagster.core.files import (
    FileFingerprint,
    FileIdentity,
    FileVersion,
    RefusedFile,
    fingerprint,
    fingerprint_s3,
    open_landed,
    pinned_path,
    version_key,
)
from harmonizer_dagster.core.harmonization import duplicate_key_sql, harmonize
from harmonizer_dagster.core.local_duckdb import local_duckdb
from harmonizer_dagster.core.quality import issue_links
from harmonizer_dagster.core.reading import (
    LINE_COLUMN,
    ReadResult,
    SourceFormatError,
    UnreliableParse,
    evolved_spec,
    read_batches,
)
from harmonizer_dagster.core.rules import Rule, apply_rules
from harmonizer_dagster.core.rules import fingerprint as rules_fingerprint
from harmonizer_dagster.core.settings import engine_threads
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.sql import quote_literal
from harmonizer_dagster.core.validation import (
    FAILED_SCHEMA,
    ISSUE_SCHEMA,
    NUL_SHOWN_AS,
    SpecValidator,
    columns_with_nul,
)
from harmonizer_dagster.core.warehouse import StagedPartition, Warehouse

DEFAULT_BATCH_ROWS = 5_000
# Batches handed to one vectorized call and staged as one file per output: per-call overhead
# (polars, DuckDB, a Parquet file) dwarfs per-row cost at 5,000 rows, and a killed step redoes
# at most one group. Groups of big batches are capped in rows, which bounds memory.
GROUP_BATCHES = 10
ROWS_PER_GROUP = 50_000
# Groups in work at once. polars and DuckDB release the GIL, so on two cores one group is
# read while others are checked or harmonized and written; memory holds WORKERS + 1 groups
# besides the one being read.
WORKERS = 2
# Up to this many rows, a file's keys are grouped in memory, with no folder to spill to.
IN_MEMORY_ROWS = 100_000
# The staged output `unique` checks read: the validated text of the columns they need.
UNIQUE_VALUES = "unique_values"


# Why a file whose bytes already came to a verdict under this spec and these rules is not loaded again.
UNCHANGED_BECAUSE = {
    "completed": "already loaded: the file has not changed",
    "held": "held by its blocking checks: the file has not changed; release or discard it",
    "discarded": "discarded by a data steward: the file has not changed",
}


@dataclass(frozen=True)
class HashedVersion:
    """What the hash step hands on: small, picklable, and enough to find everything else."""

    source: str
    partition_key: str
    path: str
    file_hash: str
    size_bytes: int
    version: str
    source_id: int
    stage_dir: str
    started_at: float
    skipped_because: str | None = None
    rules: tuple[Rule, ...] = ()
    # A skipped version's counts as its earlier load recorded them, read while registering it.
    recorded: dict[str, int] | None = None
    # A landed file's folder and what was hashed: later steps read that very file or none.
    landing_dir: str = ""
    identity: FileIdentity | None = None

    @property
    def skipped(self) -> bool:
        return self.skipped_because is not None


@dataclass(frozen=True)
class StagedVersion:
    """What one staged file version came to, as publishing it would count it; for a skipped
    version, what its earlier load recorded."""

    source: str
    partition_key: str
    skipped: bool
    records_in_file: int
    records_imported: int
    records_failed: int
    records_skipped: int
    records_inserted: int
    records_updated: int
    records_unchanged: int
    warnings: int
    issues: int
    table_rows: int
    duration_s: float

    def as_counts(self) -> dict[str, int]:
        return {name: value for name, value in self.__dict__.items() if name.startswith("records_")} | {
            "warnings": self.warnings
        }


def hash_step(
    spec: SourceSpec,
    file: FileVersion,
    warehouse: Warehouse,
    staging_root: Path,
    run_id: str,
    s3_client: Any = None,
) -> HashedVersion:
    """Fingerprints the file and registers the version (creating the registry if need be), or
    decides it needs no work.

    An S3 object is hashed while it streams into the staging area, so later steps and
    re-executions read a local copy of exactly the bytes that were hashed."""
    started = time.time()
    if not file.is_s3:
        with file.open() as handle:
            fp = fingerprint(handle)
            identity = FileIdentity.of(handle)
        return _register(spec, file, fp, None, identity, warehouse, staging_root, run_id, started)
    if s3_client is None:
        raise ValueError(f"{file.location}: an S3 client is needed to read it")
    download = staging_root / spec.name / "_downloads" / f"{uuid.uuid4().hex}-{file.file_name}"
    try:
        with staging.space_guard(staging_root, download):
            fp = fingerprint_s3(s3_client, file.location, download)
        return _register(spec, file, fp, download, None, warehouse, staging_root, run_id, started)
    finally:
        # Moved into the version's staging by then, unless the version needs no work or a step failed.
        download.unlink(missing_ok=True)


def _register(
    spec: SourceSpec,
    file: FileVersion,
    fp: FileFingerprint,
    download: Path | None,
    identity: FileIdentity | None,
    warehouse: Warehouse,
    staging_root: Path,
    run_id: str,
    started: float,
) -> HashedVersion:
    """Registers the fingerprinted version, or finds it needs no work; a downloaded copy of an S3
    object that needs work moves into the version's staging."""
    version = version_key(spec.version_strategy, fp, file.file_name, spec.version_pattern)
    # The registry's lookups and writes share one session: an unchanged file costs little
    # more than hashing it.
    with warehouse.transaction():
        warehouse.migrate([spec])
        rules = warehouse.active_rules(spec.name)
        processing = rules_fingerprint(rules, spec.processing)
        stage_dir = staging.staging_dir(staging_root, spec.name, file.partition_key, fp.file_hash, processing)
        register = dict(
            partition_key=file.partition_key,
            version=version,
            file_name=file.file_name,
            file_uri=file.uri,
            file_hash=fp.file_hash,
            size_bytes=fp.size_bytes,
            run_id=run_id,
            fingerprint=processing,
        )
        skipped_because = None
        # Same bytes, same spec, same rules: nothing to do. A new rule makes old files worth reloading.
        done = warehouse.decided_version(spec.name, file.partition_key, fp.file_hash, processing)
        if done and done.partition_key == file.partition_key:
            source_id, skipped_because = done.source_id, UNCHANGED_BECAUSE[done.status]
        elif done:
            source_id = warehouse.register_version(spec, **register, status="skipped", duplicate_of=done.source_id)
            skipped_because = f"identical to already loaded file {done.partition_key}"
        else:
            source_id = warehouse.register_version(spec, **register)
        recorded = _recorded_counts(spec, source_id, warehouse) if skipped_because else None
    data_path = file.location
    if skipped_because:
        # Left by a run killed after its publish committed and before it cleaned up.
        staging.remove(stage_dir)
    if download is not None and not skipped_because:
        stage_dir.mkdir(parents=True, exist_ok=True)
        data_path = str(stage_dir / file.file_name)
        os.replace(download, data_path)
    return HashedVersion(
        source=spec.name,
        partition_key=file.partition_key,
        path=data_path,
        file_hash=fp.file_hash,
        size_bytes=fp.size_bytes,
        version=version,
        source_id=source_id,
        stage_dir=str(stage_dir),
        started_at=started,
        skipped_because=skipped_because,
        rules=tuple(rules),
        recorded=recorded,
        landing_dir=file.landing_dir,
        identity=identity,
    )


@contextmanager
def _hashed_file(hashed: HashedVersion) -> Iterator[Path]:
    """The path later steps read the version from: the staged copy of an S3 object, or the
    landed file opened again as the hash step did, refused unless it is the file that was
    hashed and unchanged since, and pinned so the readers cannot be sent anywhere else."""
    if hashed.identity is None:
        yield Path(hashed.path)
        return
    relative = Path(hashed.path).relative_to(hashed.landing_dir).as_posix()
    with open_landed(Path(hashed.landing_dir), relative) as handle:
        if FileIdentity.of(handle) != hashed.identity:
            raise RefusedFile(
                f"{hashed.source}/{hashed.partition_key}: the file was replaced or changed after it was hashed, "
                "so it is not read now; its next run loads it as it is then"
            )
        with pinned_path(handle, Path(hashed.path).name) as path:
            yield path


def _count(files: list[Path]) -> int:
    """Rows in staged Parquet files, from their footers (no scan)."""
    return sum(pq.read_metadata(f).num_rows for f in files)


def _batches_per_group(batch_rows: int) -> int:
    return max(1, min(GROUP_BATCHES, ROWS_PER_GROUP // batch_rows))


@dataclass(frozen=True)
class Progress:
    """How far a step has got: records checkpointed, and how far into the file the read is
    (bytes_total 0 when the format gives no position: JSON arrays, line-by-line reads)."""

    records: int
    bytes_read: int
    bytes_total: int
    # Records an earlier run of the step had checkpointed: this run resumed after them.
    resumed: int = 0


# (first batch, batch count, where the step will be once it is checkpointed, work)
Group = tuple[int, int, Progress, Callable[[], dict[str, pl.DataFrame]]]


def _stage_groups(
    stage: staging.StepStage, groups: Iterable[Group], on_progress: Callable[[Progress], None] | None
) -> None:
    """Runs each group's work on WORKERS threads, which also write its files; marks the groups
    done in order, so a resumed step finds no gap, telling `on_progress` after each."""

    def run(first: int, count: int, work: Callable[[], dict[str, pl.DataFrame]]) -> None:
        stage.write_files(first, work(), count)

    def checkpoint(first: int, count: int, reached: Progress, future: Future[None]) -> None:
        future.result()
        stage.mark(first, count)
        if on_progress is not None:
            on_progress(reached)

    with ThreadPoolExecutor(WORKERS) as pool:
        pending: deque[tuple[int, int, Progress, Future[None]]] = deque()
        for first, count, reached, work in groups:
            pending.append((first, count, reached, pool.submit(run, first, count, work)))
            while len(pending) > WORKERS or (pending and pending[0][3].done()):
                checkpoint(*pending.popleft())
        for group in pending:
            checkpoint(*group)


def validate_step(
    spec: SourceSpec,
    hashed: HashedVersion,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Validates and harmonizes the file in checkpointed batches; returns the staged counts.
    `on_progress` hears where the step is after each checkpointed group."""
    stage = staging.StepStage(Path(hashed.stage_dir) / "validate")
    if hashed.skipped or stage.summary() is not None:
        return stage.summary() or {}
    original = len(spec.columns)
    with _space_guard(hashed):
        done = stage.prepare(batch_rows)
        with _hashed_file(hashed) as path:
            spec = evolved_spec(spec, path)
            try:
                result = _validate_batches(spec, hashed, path, stage, batch_rows, done, False, on_progress)
            except UnreliableParse:
                # DuckDB lost track of a quote: drop what it parsed and read the file line by line.
                staging.remove(stage.directory)
                again = stage.prepare(batch_rows)
                result = _validate_batches(spec, hashed, path, stage, batch_rows, again, True, on_progress)
        stage.write_final(_file_level_findings(spec, stage.files(UNIQUE_VALUES), result))
    accepted = _count(stage.files("harmonized"))
    summary = {
        "records_parsed": accepted + _count(stage.files("failed")) - len(result.malformed),
        "records_malformed": len(result.malformed),
        "records_accepted": accepted,
        "records_failed": _count(stage.files("failed")),
        "issues": _count(stage.files("issues")),
        "fixes_applied": _count(stage.files("fixes")),
        # Fields not in the spec's file, loaded or not: `schema_evolution: evolve` loaded the
        # `evolved_columns`, which the upsert adds to the table.
        "extra_fields": [c.source for c in spec.columns[original:]] + result.extra_fields,
        "evolved_columns": [c.source for c in spec.columns[original:]],
        "batch_rows": batch_rows,
    }
    return stage.finish(summary)


def _validate_batches(
    spec: SourceSpec,
    hashed: HashedVersion,
    path: Path,
    stage: staging.StepStage,
    batch_rows: int,
    done: int,
    line_by_line: bool,
    on_progress: Callable[[Progress], None] | None,
) -> ReadResult:
    """Stages the validated and harmonized batches after the `done` ones; returns what the read found."""
    validator = SpecValidator(spec)
    result = ReadResult()
    unique_columns = [c.name for c in spec.columns if any(check.kind == "unique" for check in c.checks)]

    def check(batches: list[pa.RecordBatch]) -> dict[str, pl.DataFrame]:
        # Learned rules fix raw values first, so a fixed value is judged like any other.
        source = pa.Table.from_batches(batches)
        raw, fixes = apply_rules(pl.from_arrow(source), list(hashed.rules))
        # The bytes as read tell which columns hold a NUL byte, unless a rule changed values since.
        checked = validator.validate(raw, with_nul=None if hashed.rules else columns_with_nul(source))
        staged = {
            "harmonized": harmonize(spec, checked.accepted),
            "issues": checked.issues,
            "failed": checked.failed,
            "fixes": fixes,
        }
        if unique_columns:
            # `unique` judges the validated text of the whole file: only its columns are kept.
            kept = dict.fromkeys([LINE_COLUMN, *spec.natural_key, *unique_columns])
            staged[UNIQUE_VALUES] = checked.accepted.select(list(kept))
        return staged

    records = done * batch_rows  # every checkpointed batch before the last one is full

    def group(first: int, pending: list[pa.RecordBatch]) -> Group:
        nonlocal records
        records += sum(b.num_rows for b in pending)
        reached = Progress(records, result.bytes_read, result.bytes_total, done * batch_rows)
        return first, len(pending), reached, partial(check, pending)

    def groups() -> Iterator[Group]:
        pending: list[pa.RecordBatch] = []
        first = done  # the batches after the `done` ones are read
        batches = read_batches(spec, path, batch_rows, result, done, line_by_line)
        for batch in batches:
            pending.append(batch)
            if len(pending) == _batches_per_group(batch_rows):
                yield group(first, pending)
                first, pending = first + len(pending), []
        if pending:
            yield group(first, pending)

    _stage_groups(stage, groups(), on_progress)
    return result


def _file_level_findings(spec: SourceSpec, unique_values: list[Path], result: ReadResult) -> dict[str, pl.DataFrame]:
    """Findings that need the whole file: malformed lines and `unique` checks."""
    failed = pl.DataFrame(
        {
            "source_line_number": [m.line for m in result.malformed],
            "source_record_id": [None] * len(result.malformed),
            "record_data": [json.dumps({"raw_line": m.raw_text}) for m in result.malformed],
            "error_type": ["malformed_record"] * len(result.malformed),
            "error_message": [f"line {m.line}: {m.error}" for m in result.malformed],
        },
        schema=FAILED_SCHEMA,
    )
    issues = [
        pl.DataFrame(
            {
                "source_line_number": [m.line for m in result.malformed],
                "source_record_id": [None] * len(result.malformed),
                "issue_type": ["malformed_record"] * len(result.malformed),
                "severity": ["error"] * len(result.malformed),
                "field_name": [None] * len(result.malformed),
                "invalid_value": [m.raw_text.replace("\x00", NUL_SHOWN_AS) for m in result.malformed],
                "expected_format": [f"line {m.line}: {m.error}" for m in result.malformed],
                "rule": ["parse"] * len(result.malformed),
            },
            schema=ISSUE_SCHEMA,
        )
    ]
    for column in spec.columns:
        for number, check in enumerate(column.checks):
            if check.kind != "unique" or not unique_values:
                continue
            duplicated = (
                pl.scan_parquet(unique_values)
                .filter(pl.col(column.name).is_not_null() & pl.col(column.name).is_duplicated())
                .select(
                    pl.col(LINE_COLUMN).alias("source_line_number"),
                    pl.concat_str([pl.col(k).fill_null("") for k in spec.natural_key], separator="|").alias(
                        "source_record_id"
                    ),
                    pl.lit(check.issue_type).alias("issue_type"),
                    pl.lit(check.severity).alias("severity"),
                    pl.lit(column.name).alias("field_name"),
                    pl.col(column.name).alias("invalid_value"),
                    pl.lit(check.expected_format).alias("expected_format"),
                    pl.lit(f"{column.name}:{number}").alias("rule"),
                )
                .collect()
            )
            issues.append(duplicated.cast(ISSUE_SCHEMA))
    return {"issues": pl.concat(issues), "failed": failed}


def deduplicate_step(spec: SourceSpec, hashed: HashedVersion) -> dict[str, Any]:
    """Records which duplicates of a natural key lose, the last occurrence winning: it needs
    every harmonized row of the file (validate staged them batch by batch)."""
    stage = staging.StepStage(Path(hashed.stage_dir) / "deduplicate")
    if hashed.skipped or stage.summary() is not None:
        return stage.summary() or {}
    validated = staging.StepStage(Path(hashed.stage_dir) / "validate")
    if validated.summary() is None:
        raise RuntimeError(f"{hashed.partition_key}: validate has not finished; run it first")
    with _space_guard(hashed):
        return _deduplicate(spec, stage, validated)


@contextlib.contextmanager
def _space_guard(hashed: HashedVersion) -> Iterator[None]:
    """Removes the version's staging when it can never be reused: its disk is full (the re-run
    starts afresh, maybe elsewhere), or the file cannot be read (a corrected file has other
    bytes, so another staging). Any other failure keeps it for the re-run to resume from."""
    stage_dir = Path(hashed.stage_dir)
    try:
        with staging.space_guard(stage_dir.parent.parent, stage_dir):
            yield
    except SourceFormatError:
        staging.remove(stage_dir)
        raise


def _deduplicate(spec: SourceSpec, stage: staging.StepStage, validated: staging.StepStage) -> dict[str, Any]:
    """The duplicate-key issues go from DuckDB straight to a staged Parquet file: a file of
    millions of copies of one record has millions of issues, which never sit in memory."""
    stage.prepare()
    harmonized = validated.files("harmonized")
    if not harmonized:
        empty = pl.DataFrame(schema=ISSUE_SCHEMA)
        stage.write_final({"issues": empty, "superseded": empty.select("source_line_number")})
        return stage.finish({"records_harmonized": 0, "records_duplicate": 0})
    paths = ", ".join(quote_literal(str(p)) for p in harmonized)
    duplicates = duplicate_key_sql(spec, f"read_parquet([{paths}])")
    columns = {
        "source_line_number": "CAST(source_line_number AS BIGINT)",
        "source_record_id": "source_record_id",
        "issue_type": "'duplicate_key'",
        "severity": "'warning'",
        "field_name": quote_literal(", ".join(spec.natural_key)),
        "invalid_value": "source_record_id",
        "expected_format": "'unique natural key; the record on line ' || CAST(kept_line AS VARCHAR) || ' was kept'",
        "rule": "'natural_key'",
    }
    assert list(columns) == list(ISSUE_SCHEMA)
    issues = ", ".join(
        f"CAST({sql} AS VARCHAR) AS {name}" if name != "source_line_number" else f"{sql} AS {name}"
        for name, sql in columns.items()
    )
    # Grouping every key of the file is what this step's memory grows by: past IN_MEMORY_ROWS
    # rows, a DuckDB of the step's own spills past its limit into the stage's own folder (an
    # in-memory database has no spill folder otherwise); fewer are grouped in the process's own.
    if validated.summary()["records_accepted"] <= IN_MEMORY_ROWS:
        connection = local_duckdb()
    else:
        config = {
            "threads": engine_threads(),
            "memory_limit": "256MB",
            "temp_directory": str(stage.directory / "spill"),
            "preserve_insertion_order": False,
        }
        connection = duckdb.connect(config=config)
    with connection:
        written = stage.write_final_by(
            "issues",
            lambda path: connection.execute(
                f"COPY (SELECT {issues} FROM ({duplicates}) AS d) "
                f"TO {quote_literal(str(path))} (FORMAT parquet, COMPRESSION uncompressed)"
            ),
        )
        # The superseded lines are what the upsert leaves out: the rule is applied once, here.
        stage.write_final_by(
            "superseded",
            lambda path: connection.execute(
                f"COPY (SELECT source_line_number FROM read_parquet({quote_literal(str(written))})) "
                f"TO {quote_literal(str(path))} (FORMAT parquet, COMPRESSION uncompressed)"
            ),
        )
    staging.remove(stage.directory / "spill")
    return stage.finish({"records_harmonized": _count(harmonized), "records_duplicate": _count([written])})


def stage_step(spec: SourceSpec, hashed: HashedVersion, warehouse: Warehouse, run_id: str) -> StagedVersion:
    """Writes the version to the warehouse's stage with its issues, in one transaction, then
    removes its files: the table consumers read is left for `publishing.publish`."""
    if hashed.skipped:
        return _result(spec, hashed, hashed.recorded or {})
    root = Path(hashed.stage_dir)
    validated = staging.StepStage(root / "validate")
    deduplicated = staging.StepStage(root / "deduplicate")
    validate_summary, deduplicate_summary = validated.summary(), deduplicated.summary()
    if validate_summary is None or deduplicate_summary is None:
        # Another run (say an automatic retry) staged this version and removed its files.
        if warehouse.version_counts(hashed.source_id) is not None:
            return _result(spec, hashed, _recorded_counts(spec, hashed.source_id, warehouse))
        raise RuntimeError(f"{hashed.partition_key}: staged outputs are missing; re-run validate and deduplicate")
    # The file's new columns, under `schema_evolution: evolve`, become nullable columns of the table.
    spec = spec.evolved(validate_summary.get("evolved_columns", []))
    warehouse.migrate([spec])
    duplicates = deduplicate_summary["records_duplicate"]

    def staged_files(stage: staging.StepStage, name: str, rows: int) -> list[Path]:
        # Outputs with no rows are left out: nothing to load, and a first publish of a clean
        # file then writes no issue tables at all.
        return stage.files(name) if rows else []

    staged = StagedPartition(
        source_id=hashed.source_id,
        file_hash=hashed.file_hash,
        partition_key=hashed.partition_key,
        harmonized_files=staged_files(validated, "harmonized", validate_summary["records_accepted"]),
        superseded_files=staged_files(deduplicated, "superseded", duplicates),
        issue_files=staged_files(validated, "issues", validate_summary["issues"])
        + staged_files(deduplicated, "issues", duplicates),
        failed_files=staged_files(validated, "failed", validate_summary["records_failed"]),
        fix_files=staged_files(validated, "fixes", validate_summary["fixes_applied"]),
        records_in_file=validate_summary["records_parsed"] + validate_summary["records_malformed"],
        records_failed=validate_summary["records_failed"],
        records_skipped=duplicates,
        extra_fields=tuple(validate_summary["extra_fields"]),
    )
    warehouse.stage(spec, staged, run_id, issue_links(spec))
    staging.remove(root)
    return _result(spec, hashed, _recorded_counts(spec, hashed.source_id, warehouse))


def _recorded_counts(spec: SourceSpec, source_id: int, warehouse: Warehouse) -> dict[str, int]:
    """The version's counts as the registry holds them, and the table's size: the warehouse,
    not the staging, is the truth."""
    with warehouse.transaction():
        counts = warehouse.version_counts(source_id) or {}
        return counts | {"table_rows": int(warehouse.query(f"SELECT count(*) FROM {warehouse.table(spec.name)}")[0][0])}


def _result(spec: SourceSpec, hashed: HashedVersion, counts: dict[str, int]) -> StagedVersion:
    return StagedVersion(
        source=spec.name,
        partition_key=hashed.partition_key,
        skipped=hashed.skipped,
        records_in_file=counts.get("records_in_file", 0),
        records_imported=counts.get("records_imported", 0),
        records_failed=counts.get("records_failed", 0),
        records_skipped=counts.get("records_skipped", 0),
        records_inserted=counts.get("records_inserted", 0),
        records_updated=counts.get("records_updated", 0),
        records_unchanged=counts.get("records_unchanged", 0),
        warnings=counts.get("warnings", 0),
        issues=counts.get("issues", 0),
        table_rows=counts.get("table_rows", 0),
        duration_s=time.time() - hashed.started_at,
    )
