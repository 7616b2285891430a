"""The embedded default: a DuckDB file, opened only for the duration of each transaction.

DuckDB admits one process per file, so connections are never held between calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.settings import engine_threads
from harmonizer_dagster.core.sql import quote_ident, quote_literal
from harmonizer_dagster.core.warehouse.base import Session, Warehouse


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

    @property
    def description(self) -> str:
        return f"DuckDB file {self.path}"

    @contextmanager
    def session(self) -> Iterator[DuckDBSession]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        config = {"memory_limit": self.memory_limit, "threads": engine_threads()}
        connection = duckdb.connect(str(self.path), config=config)
        try:
            connection.execute("BEGIN TRANSACTION")
            yield DuckDBSession(connection)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()
