"""The embedded default: a DuckDB file, opened only for the duration of each transaction.

DuckDB admits one process per file, so connections are never held between calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from harmonizer_dagster.core.sql import quote_ident, quote_literal
from harmonizer_dagster.core.warehouse.base import Session, Warehouse


class DuckDBSession(Session):
    def __init__(self, connection: duckdb.DuckDBPyConnection):
        self.connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cursor = self.connection.execute(sql.replace("%s", "?"), list(params))
        return cursor.fetchall() if cursor.description else []

    def load_parquet(self, table: str, columns: list[tuple[str, str]], files: list[Path]) -> None:
        definition = ", ".join(f"{quote_ident(name)} {kind}" for name, kind in columns)
        self.connection.execute(f"CREATE OR REPLACE TEMPORARY TABLE {quote_ident(table)} ({definition})")
        if files:
            names = ", ".join(quote_ident(name) for name, _ in columns)
            paths = ", ".join(quote_literal(str(f)) for f in files)
            self.connection.execute(
                f"INSERT INTO {quote_ident(table)} ({names}) SELECT {names} FROM read_parquet([{paths}])"
            )


class DuckDBWarehouse(Warehouse):
    # DuckDB keeps index (ART) nodes in memory: a 10M-key primary key does not fit a Pi.
    key_index = False

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
        connection = duckdb.connect(str(self.path), config={"memory_limit": self.memory_limit})
        try:
            connection.execute("BEGIN TRANSACTION")
            yield DuckDBSession(connection)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()
