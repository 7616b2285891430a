"""The embedded instance: Dagster's SQLite instance, with an event log that keeps its connections.

Dagster's SQLite event log builds a new engine and connection for every write, and a run of
many small files writes five events per file: measured here, connecting cost more than the
writes (a materialization 6.9 ms, 1.9 ms on a kept connection; a log line 3.1 ms, 0.7 ms).
This event log keeps a connection to each of the few database files a process used last, and
is Dagster's in every other way: the same files in the same folders, schema and migrations, so
an instance switches to it, or back, with its history.

Dagster hands a storage its folder only through the instance's defaults, so the instance class
(`instance_class` in deploy/local/dagster.yaml) is what puts this storage in place.
"""

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as sa
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage
from dagster._serdes import ConfigurableClassData

# Database files a process keeps a connection to: the index, and the runs it writes or follows.
KEPT_FILES = 8


class KeptConnectionsEventLogStorage(SqliteEventLogStorage):
    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        # Dagster's lock is held for the whole transaction, so one connection per file serves
        # every thread, one at a time.
        with self._db_lock, self._engine(shard).connect() as connection, connection.begin():
            yield connection

    def _engine(self, shard: str) -> sa.Engine:
        engines = self._engines
        engine = engines.pop(shard, None)
        if engine is None:
            engine = sa.create_engine(
                self.conn_string_for_shard(shard),
                poolclass=sa.pool.StaticPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
        engines[shard] = engine
        while len(engines) > KEPT_FILES:
            engines.popitem(last=False)[1].dispose()
        return engine

    def _close_all(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        self._close_all()  # the run files are deleted: no connection may outlive them
        super().wipe()

    def dispose(self) -> None:
        self._close_all()
        super().dispose()


class EmbeddedStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage under `base_dir`, with the event log above."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._event_log_storage = KeptConnectionsEventLogStorage(os.path.join(base_dir, "history", "runs", ""))

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, str]
    ) -> "EmbeddedStorage":
        return cls(config_value["base_dir"], inst_data)


class EmbeddedInstance(dg.DagsterInstance):
    """Dagster's instance, whose default storage (no `storage` in dagster.yaml) is EmbeddedStorage
    in the instance's folder."""

    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        storage = ConfigurableClassData(__name__, EmbeddedStorage.__name__, yaml.dump({"base_dir": base_dir}))
        return {**InstanceRef.config_defaults(base_dir), "storage": storage}
