"""The embedded default: a DuckDB file, opened for each transaction or kept open for a run.

DuckDB admits one process per file (a reader as well as a writer), so a process that finds the
file held waits for it, and says so: it leaves a `<file>.wanted` mark beside the file while it
waits. A run that keeps the file open looks for that mark after each transaction and, when it
is there, closes the file until the waiter has it. Loads, the CLI, a metrics scrape and the
triage page take turns, transaction by transaction, and a run nobody waits for opens the file
once.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.settings import engine_threads
from harmonizer_dagster.core.sql import quote_ident, quote_literal
from harmonizer_dagster.core.warehouse.base import Session, Warehouse, WarehouseBusy

# How DuckDB says another process holds the file, naming it when it can.
HELD = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")
LONGEST_PAUSE_S = 1.0
# A waiter renews its mark at every attempt, at most LONGEST_PAUSE_S apart: an older mark was
# left by a process that gave up or died.
WANTED_FRESH_S = 3 * LONGEST_PAUSE_S
# A file this small, or this recently written, may be one another process is creating.
NEW_FILE_BYTES = 12 * 1024
NEW_FILE_SECONDS = 5.0


class DuckDBSession(Session):
    def __init__(self, connection: duckdb.DuckDBPyConnection):
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cursor = self.connection.execute(sql.replace("%s", "?"), list(params))
        return cursor.fetchall() if cursor.description else []

    def load_parquet(
        self, table: str, columns: list[tuple[str, str]], files: list[Path], superseded: Sequence[Path] = ()
    ) -> int:
        # A view, not a copy: each statement reading it scans the Parquet files in place, which
        # is cheaper than writing every staged row into a temporary table first.
        typed = ", ".join(f"CAST({quote_ident(name)} AS {kind}) AS {quote_ident(name)}" for name, kind in columns)
        relation = f"SELECT {typed} FROM {_parquet(files)}" if files else _empty(columns)
        if files and superseded:
            relation += (
                f" AS f WHERE NOT EXISTS (SELECT 1 FROM {_parquet(superseded)} AS d "
                f"WHERE d.source_line_number = f.{quote_ident(LINE_COLUMN)})"
            )
        self.connection.execute(f"CREATE OR REPLACE TEMPORARY VIEW {quote_ident(table)} AS {relation}")
        return int(self.connection.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0])

    def modify(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.connection.execute(sql.replace("%s", "?"), list(params)).fetchone()[0])

    def stream(self, sql: str, params: Sequence[Any] = (), rows: int = 10_000) -> Iterator[list[tuple]]:
        cursor = self.connection.execute(sql.replace("%s", "?"), list(params))
        while batch := cursor.fetchmany(rows):
            yield batch


def _parquet(files: Sequence[Path]) -> str:
    return f"read_parquet([{', '.join(quote_literal(str(f)) for f in files)}])"


def _empty(columns: list[tuple[str, str]]) -> str:
    return "SELECT " + ", ".join(f"CAST(NULL AS {kind}) AS {quote_ident(name)}" for name, kind in columns) + " LIMIT 0"


class DuckDBWarehouse(Warehouse):
    # DuckDB keeps index (ART) nodes in memory: a 10M-key primary key does not fit a Pi.
    key_index = False
    row_id = "rowid"
    # DuckDB's optimistic concurrency: the later of two transactions writing one key fails to commit.
    commit_conflicts = (duckdb.TransactionException, duckdb.ConstraintException)

    def __init__(self, path: Path, schema: str = "harmonizer", memory_limit: str = "400MB"):
        super().__init__(schema)
        self.path = path
        self.memory_limit = memory_limit
        # While `kept_open`: the open file and the sessions using it.
        self._kept: duckdb.DuckDBPyConnection | None = None
        self._keeping = False
        self._kept_users = 0
        self._kept_lock = threading.Lock()
        self._wanted = path.with_name(path.name + ".wanted")

    @property
    def description(self) -> str:
        return f"DuckDB file {self.path}"

    def json_object(self, fields: Sequence[tuple[str, str]]) -> str:
        # A struct, made JSON once whole: half the time of json_object's nested calls (1M messages
        # of 13 columns: 3.6 s of CPU against 5.5 s).
        return "struct_pack(" + ", ".join(f"{quote_ident(name)} := {sql}" for name, sql in fields) + ")"

    def json_array(self, items: Sequence[str]) -> str:
        return f"list_value({', '.join(items)})"

    def json_text(self, value: str) -> str:
        return f"CAST(to_json({value}) AS VARCHAR)"

    def hold(self, s: Session, name: str) -> None:
        """Nothing to take: a session holds the whole file, so no other process can write it."""

    @contextmanager
    def session(self) -> Iterator[DuckDBSession]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._kept_cursor() if self._keeping else self._connect()
        try:
            connection.execute("BEGIN TRANSACTION")
            yield DuckDBSession(connection)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()
            if self._keeping:
                self._session_ended()

    @contextmanager
    def kept_open(self) -> Iterator[None]:
        """Opening the file costs more than a small file's transactions (tens of milliseconds,
        growing with the catalog): a run keeps it open between its sessions, and lets a waiting
        process have its turn at the end of a session."""
        self._keeping = True
        try:
            yield
        finally:
            self._keeping = False
            with self._kept_lock:
                if self._kept_users == 0:
                    self._close_kept()

    @contextmanager
    def held_file(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The file opened outside a transaction (a checkpoint, a backup copy), taken as any
        session takes it: no other process reads or writes it until the block ends."""
        connection = self._connect()
        try:
            yield connection
        finally:
            connection.close()

    def _kept_cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own (sessions may run in other threads) to the open file."""
        with self._kept_lock:
            if self._kept is None:
                self._kept = self._connect()
            self._kept_users += 1
            return self._kept.cursor()

    def _session_ended(self) -> None:
        with self._kept_lock:
            self._kept_users -= 1
            if self._kept_users or self._kept is None or not self._is_wanted():
                return
            self._close_kept()
            # The waiter retries after a pause of up to LONGEST_PAUSE_S: the file stays closed
            # until it has taken it (its mark is gone) or that long has passed.
            deadline = time.monotonic() + LONGEST_PAUSE_S * 1.5
            while self._is_wanted() and time.monotonic() < deadline:
                time.sleep(0.01)

    def _is_wanted(self) -> bool:
        try:
            return time.time() - self._wanted.stat().st_mtime < WANTED_FRESH_S
        except OSError:
            return False

    def _want(self, waiting: bool) -> None:
        """Leaves (or renews) the mark that asks a run keeping the file open for a turn, or
        removes it once this process has the file."""
        try:
            if waiting:
                self._wanted.touch()
            else:
                self._wanted.unlink(missing_ok=True)
        except OSError:  # a read-only folder: this process waits without asking
            pass

    def _close_kept(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def _being_created(self, exc: duckdb.IOException) -> bool:
        """Whether the file another process is creating this very moment was opened before its
        header was written: DuckDB calls it no database file. A young or headerless file is
        waited for like a held one; an older one is a broken file, and the error stands."""
        if "not a valid DuckDB database file" not in str(exc):
            return False
        try:
            stat = self.path.stat()
        except OSError:
            return True
        return stat.st_size < NEW_FILE_BYTES or time.time() - stat.st_mtime < NEW_FILE_SECONDS

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Opens the file, waiting with growing pauses while another process holds it."""
        config = {"memory_limit": self.memory_limit, "threads": engine_threads()}
        timeout = self.wait_limit()
        started = time.monotonic()
        deadline, pause, told = started + timeout, 0.02, False
        while True:
            try:
                connection = duckdb.connect(str(self.path), config=config)
                if told:
                    self._want(False)
                return connection
            except duckdb.IOException as exc:
                held = HELD.search(str(exc))
                creating = held is None and "Conflicting lock" not in str(exc)
                if creating and not (self._being_created(exc) and time.monotonic() < started + NEW_FILE_SECONDS):
                    raise
                holder = f"process {held['pid']} ({held['program']})" if held else "another process"
                left = deadline - time.monotonic()
                if left <= 0:
                    self._want(False)
                    raise WarehouseBusy(
                        f"the warehouse {self.path.resolve()} was still held by {holder} after {timeout:g} s: "
                        "wait for it to finish, or raise HARMONIZER_WAREHOUSE_LOCK_TIMEOUT"
                    ) from exc
                if not told:
                    self.on_wait(
                        f"waiting for the warehouse: {holder} holds {self.path.resolve()} (a load, most likely); "
                        f"up to {timeout:g} s (HARMONIZER_WAREHOUSE_LOCK_TIMEOUT)"
                    )
                    told = True
                self._want(True)
                time.sleep(min(pause, left))
                pause = min(pause * 2, LONGEST_PAUSE_S)
