"""The process's in-memory DuckDB: threads share it without seeing each other's tables, and a
forked child opens its own."""

import os
import threading

import pyarrow as pa

from harmonizer_dagster.core.local_duckdb import local_duckdb


def test_threads_register_tables_of_one_name_side_by_side():
    started, results = threading.Barrier(4), {}

    def total(n: int) -> None:
        with local_duckdb() as connection:
            connection.register("canonical", pa.table({"v": list(range(n))}))
            started.wait(30)  # every thread has registered its own table before any reads
            results[n] = connection.execute("SELECT sum(v) FROM canonical").fetchone()[0]

    threads = [threading.Thread(target=total, args=(n,)) for n in (10, 100, 1000, 10000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: n * (n - 1) // 2 for n in (10, 100, 1000, 10000)}


def test_a_forked_child_opens_its_own_database():
    with local_duckdb() as connection:
        connection.sql("SELECT 1").fetchall()
    child = os.fork()
    if child == 0:  # the child: its parent's engine is not used, a new one answers
        try:
            with local_duckdb() as connection:
                os._exit(0 if connection.execute("SELECT 42").fetchone() == (42,) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
