"""The process's in-memory DuckDB, for the work that needs an engine but no warehouse.

Reading a file, hashing its rows and finding its duplicate keys each ran in a DuckDB of their
own, and opening one costs about 35 ms: more than a small file's whole read. One database per
process hands out cursors instead, which cost microseconds and may run in threads side by side.
"""

from __future__ import annotations

import os
import threading

import duckdb

from harmonizer_dagster.core.settings import engine_threads

# As much as a read of a large file may hold before DuckDB fails it.
MEMORY_LIMIT = "512MB"

_lock = threading.Lock()
_database: duckdb.DuckDBPyConnection | None = None


def local_duckdb() -> duckdb.DuckDBPyConnection:
    """A connection of its own to the process's in-memory DuckDB: close it when done (`with`)."""
    global _database
    with _lock:
        if _database is None:
            _database = duckdb.connect(config={"threads": engine_threads(), "memory_limit": MEMORY_LIMIT})
        return _database.cursor()


# Engines a forked child inherited: never used, and never closed either, since closing one
# waits on worker threads the child does not have.
_inherited: list[duckdb.DuckDBPyConnection] = []


def _forget() -> None:
    # A forked child must not use its parent's engine (its threads did not survive the fork):
    # it opens its own.
    global _database, _lock
    if _database is not None:
        _inherited.append(_database)
    _database, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget)
