"""Published changes produced to Kafka, as the CSV-to-Kafka processor did: ordered, idempotent,
resumable.

After a version is published, every row it wrote to the table consumers read (a new key, or a
row it replaced) is one message on the sink's topic: keyed by the natural key, so one key's
changes stay in order on one partition; its value the row as JSON with its provenance (see the
JSON Schema in docs/production.md). The rows are those the table holds tagged with the version
(`_file_hash`, `_partition_key`), read in line order; `published_updates` tells an update from a
new key.

Delivery is at least once. The producer is librdkafka's idempotent one (`acks=all`, in order
per partition); the position acknowledged in line order is checkpointed in `sink_checkpoints`
at least every HARMONIZER_KAFKA_CHECKPOINT_RECORDS records, and a run killed at any point
resumes after it: what the broker had acknowledged past the checkpoint is produced again. A
message the broker refuses as too large becomes a dead letter (`failed_records`) with the
reason, and the run goes on. Nothing here knows about Dagster.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from harmonizer_dagster.core.dead_letters import record_sink_rejects
from harmonizer_dagster.core.harmonization import ROW_HASH_COLUMN
from harmonizer_dagster.core.reading import LINE_COLUMN
from harmonizer_dagster.core.spec import Column, KafkaSink, SourceSpec
from harmonizer_dagster.core.sql import quote_ident, quote_literal
from harmonizer_dagster.core.warehouse import Warehouse

# Column types a JSON value carries as text, exactly as the warehouse writes them: a decimal's
# digits, a date, a timestamp. Strings, integers and booleans are JSON's own.
AS_TEXT = ("decimal", "date", "timestamp")
# Blocks of HARMONIZER_KAFKA_CHECKPOINT_RECORDS sent but not all acknowledged, at most: what a
# killed run may have to send again, and enough to keep the producer busy between two polls.
BLOCKS_IN_FLIGHT = 4
# What librdkafka says of a message over the size limit: the client's (before sending) or the broker's.
TOO_LARGE = (KafkaError.MSG_SIZE_TOO_LARGE,)


class SinkError(RuntimeError):
    """A sink could not take a version's changes: brokers unreachable, a topic missing, records
    not acknowledged. The checkpoint keeps what was acknowledged; a retry resumes after it."""


class NotPublished(ValueError):
    """The partition has no published version (it is staged, held or discarded): nothing to produce."""


@dataclass(frozen=True)
class KafkaSettings:
    """Where and how to produce: the deployment's brokers and login (HARMONIZER_KAFKA_*, or the
    secrets store), and the legacy processor's delivery settings."""

    brokers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""
    compression: str = "gzip"
    checkpoint_records: int = 10_000
    max_message_bytes: int = 1_000_000
    delivery_timeout_seconds: float = 120.0
    connect_timeout_seconds: float = 10.0

    def producer_config(self) -> dict[str, Any]:
        return {
            **self.client_config(),
            # The legacy processor's: every in-sync replica acknowledges, retries never duplicate
            # nor reorder (idempotence keeps up to 5 requests in flight in order), gzip.
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": self.compression,
            "linger.ms": 20,
            "message.max.bytes": self.max_message_bytes,
            "message.timeout.ms": int(self.delivery_timeout_seconds * 1000),
        }

    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"bootstrap.servers": self.brokers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            config |= {
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.username,
                "sasl.password": self.password,
            }
        if self.ca_file:
            config["ssl.ca.location"] = self.ca_file
        return config


@dataclass(frozen=True)
class Version:
    """A published version as its messages name it."""

    source_id: int
    partition_key: str
    file_name: str
    file_hash: str
    version: str
    changes_published: int  # records_inserted + records_updated as the publish counted them


@dataclass(frozen=True)
class Produced:
    """What one run of a sink over a version came to."""

    source_id: int
    partition_key: str
    sink: str
    changes: int  # rows the table holds tagged with the version: the messages due
    produced: int  # acknowledged by the broker, in all runs (a resumed run adds to the earlier ones)
    dead_letters: int
    resumed_from: int  # records acknowledged before this run, 0 for a first run or a replay
    changes_published: int
    seconds: float

    @property
    def complete(self) -> bool:
        """Every change the version holds is on the topic or a dead letter."""
        return self.produced + self.dead_letters == self.changes


def published_version(store: Warehouse, spec: SourceSpec, partition_key: str) -> Version:
    """The partition's latest version, if it is published; NotPublished otherwise (a held
    version produces nothing until a steward releases it)."""
    rows = store.query(
        "SELECT source_id, status, file_name, file_hash, source_version, coalesce(records_inserted, 0) "
        "+ coalesce(records_updated, 0) FROM {schema}.sources WHERE source_type = %s AND partition_key = %s "
        "AND status IN ('completed', 'skipped', 'staged', 'held', 'discarded') ORDER BY source_id DESC LIMIT 1",
        (spec.name, partition_key),
    )
    if not rows:
        raise NotPublished(f"{partition_key} has no version")
    source_id, status, file_name, file_hash, version, published = rows[0]
    if status not in ("completed", "skipped"):
        raise NotPublished(f"{partition_key} is {status}, not published: it produces nothing until it is")
    return Version(int(source_id), partition_key, str(file_name), str(file_hash), str(version), int(published))


def change_messages_sql(store: Warehouse, spec: SourceSpec, version: Version) -> str:
    """The query of a version's messages, in line order after a line `%s`: (key, value, line).
    The JSON is built by the database, one statement for the whole version."""
    line = f"t.{quote_ident(LINE_COLUMN)}"

    def typed(column: Column) -> str:
        value = f"t.{quote_ident(column.name)}"
        return f"CAST({value} AS VARCHAR)" if column.type in AS_TEXT else value

    provenance = [
        ("source", quote_literal(spec.name)),
        ("file", quote_literal(version.file_name)),
        ("file_hash", quote_literal(version.file_hash)),
        ("partition_key", quote_literal(version.partition_key)),
        ("version", quote_literal(version.version)),
        ("source_id", str(int(version.source_id))),
        ("line", line),
        ("row_hash", f"CAST(t.{ROW_HASH_COLUMN} AS VARCHAR)"),
        ("change", "CASE WHEN t.updated_line IS NULL THEN 'inserted' ELSE 'updated' END"),
    ]
    message = store.json_object(
        [
            ("values", store.json_object([(c.name, typed(c)) for c in spec.columns])),
            ("provenance", store.json_object(provenance)),
        ]
    )
    keys = [f"CAST(t.{quote_ident(k)} AS VARCHAR)" for k in spec.natural_key]
    key = keys[0] if len(keys) == 1 else store.json_text(store.json_array(keys))
    # The rows' plain columns are sorted first and their JSON built as they are read: the database
    # then streams the JSON (DuckDB computes it chunk by chunk as it is fetched) instead of
    # building and sorting all of it before the first message.
    read = ", ".join(f"s.{quote_ident(c.name)}" for c in spec.columns)
    return (
        f"SELECT {key}, {store.json_text(message)}, {line} FROM (SELECT {read}, s.{quote_ident(LINE_COLUMN)}, "
        f"s.{ROW_HASH_COLUMN}, u.source_line_number AS updated_line "
        f"FROM {store.table(spec.name)} s LEFT JOIN {{schema}}.published_updates u "
        f"ON u.source_id = {int(version.source_id)} AND u.source_line_number = s.{quote_ident(LINE_COLUMN)} "
        f"WHERE s._file_hash = {quote_literal(version.file_hash)} "
        f"AND s._partition_key = {quote_literal(version.partition_key)} AND s.{quote_ident(LINE_COLUMN)} > %s "
        f"ORDER BY s.{quote_ident(LINE_COLUMN)}) AS t"
    )


def changes_of(store: Warehouse, spec: SourceSpec, version: Version) -> int:
    """How many rows of the table the version wrote and still holds: the messages it is due."""
    return int(
        store.query(
            f"SELECT count(*) FROM {store.table(spec.name)} WHERE _file_hash = %s AND _partition_key = %s",
            (version.file_hash, version.partition_key),
        )[0][0]
    )


@dataclass
class Checkpoint:
    """How far a version got into a sink: records acknowledged in line order up to `line`."""

    line: int = -1
    produced: int = 0
    dead_letters: int = 0


class _CheckpointWriter:
    """Saves the latest checkpoint from a thread of its own: a commit costs a DuckDB file 10-40 ms,
    which the producing loop would otherwise wait for at every block. A checkpoint is saved after
    the broker acknowledged it, never before; a newer one replaces one not saved yet."""

    def __init__(self, save: Callable[[Checkpoint], None], saved: Callable[[Checkpoint], None] | None) -> None:
        self.save, self.saved = save, saved
        self.latest: Checkpoint | None = None
        self.closing = False
        self.error: BaseException | None = None
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="sink-checkpoints", daemon=True)
        self.thread.start()

    def record(self, at: Checkpoint) -> None:
        if self.error is not None:
            raise self.error
        with self.changed:
            self.latest = replace(at)
            self.changed.notify()

    def _run(self) -> None:
        while True:
            with self.changed:
                while self.latest is None and not self.closing:
                    self.changed.wait()
                at, self.latest = self.latest, None
                if at is None:
                    return
            try:
                self.save(at)
                if self.saved:
                    self.saved(at)
            except BaseException as exc:  # raised in the producing thread at its next record or close
                self.error = exc
                return

    def close(self, raising: bool = True) -> None:
        """Waits for the last checkpoint recorded to be saved; raises what failed a save."""
        with self.changed:
            self.closing = True
            self.changed.notify()
        self.thread.join()
        if raising and self.error is not None:
            raise self.error


def checkpoint(store: Warehouse, sink: KafkaSink, source_id: int) -> tuple[Checkpoint, str] | None:
    """The version's checkpoint in the sink and its status (producing, failed, completed), if any."""
    rows = store.query(
        "SELECT line, produced, dead_letters, status FROM {schema}.sink_checkpoints WHERE source_id = %s AND sink = %s",
        (source_id, sink.name),
    )
    return (Checkpoint(int(rows[0][0]), int(rows[0][1]), int(rows[0][2])), str(rows[0][3])) if rows else None


def _save(
    store: Warehouse,
    spec: SourceSpec,
    sink: KafkaSink,
    version: Version,
    changes: int,
    at: Checkpoint,
    status: str,
    run_id: str,
    error: str | None = None,
) -> None:
    store.query(
        "INSERT INTO {schema}.sink_checkpoints (source_id, sink, source_type, partition_key, changes, produced, "
        "line, dead_letters, status, error_message, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (source_id, sink) DO UPDATE SET changes = excluded.changes, produced = excluded.produced, "
        "line = excluded.line, dead_letters = excluded.dead_letters, status = excluded.status, "
        "error_message = excluded.error_message, run_id = excluded.run_id, updated_at = now()",
        (
            version.source_id,
            sink.name,
            spec.name,
            version.partition_key,
            changes,
            at.produced,
            at.line,
            at.dead_letters,
            status,
            error[:4000] if error else None,
            run_id,
        ),
    )


def ensure_topic(settings: KafkaSettings, sink: KafkaSink) -> None:
    """Fails at once, saying so, when the brokers cannot be reached; creates a missing topic when
    the spec says so, and fails naming it otherwise (a broker that creates topics on first use
    would otherwise make one with its defaults)."""
    admin = AdminClient(settings.client_config())
    try:
        # All topics, not this one: asking for a topic by name lets such a broker create it.
        topics = admin.list_topics(timeout=settings.connect_timeout_seconds).topics
    except KafkaException as exc:
        raise SinkError(
            f"Kafka brokers {settings.brokers} not reachable within {settings.connect_timeout_seconds:g} s: "
            f"{exc.args[0].str() if exc.args else exc}"
        ) from None
    if sink.topic in topics:
        return
    if not sink.create_topic:
        raise SinkError(
            f"topic {sink.topic} does not exist on {settings.brokers}; create it, or set `create_topic: true` "
            "in the source's sink"
        )
    future = admin.create_topics([NewTopic(sink.topic, num_partitions=sink.partitions)])[sink.topic]
    try:
        future.result(timeout=settings.connect_timeout_seconds)
    except KafkaException as exc:
        if exc.args and exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise SinkError(f"topic {sink.topic} could not be created: {exc.args[0].str()}") from None


@dataclass
class _Block:
    """Messages sent together, acknowledged one by one: the checkpoint moves past a block once
    it and every block before it were acknowledged."""

    last_line: int
    sent: int = 0  # messages handed to the producer, or refused by it as too large
    pending: int = 0  # of those, not acknowledged yet
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # dead letters: (line, value, reason)
    failures: list[str] = field(default_factory=list)

    def acknowledged(self, error: KafkaError | None, message: Any) -> None:
        self.pending -= 1
        if error is None:
            return
        if error.code() in TOO_LARGE:
            value = message.value()
            self.rejected.append((_line_of(value), value.decode(), f"the broker refused it: {error.str()}"))
        else:
            self.failures.append(error.str())


def _read_ahead(batches: Generator[list[tuple], None, None], depth: int = 2) -> Iterator[list[tuple]]:
    """The batches, read by a thread of their own up to `depth` ahead: the database builds the
    next block's messages while this one is produced."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def read() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        ahead.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(done)
        except BaseException as exc:  # handed over to the producing thread, which raises it
            ahead.put(exc)

    reader = threading.Thread(target=read, name="sink-reader", daemon=True)
    reader.start()
    try:
        while (item := ahead.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()
        batches.close()


def _line_of(value: bytes) -> int:
    return int(json.loads(value)["provenance"]["line"])


def produce_version(
    store: Warehouse,
    spec: SourceSpec,
    sink: KafkaSink,
    partition_key: str,
    settings: KafkaSettings,
    run_id: str,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
) -> Produced:
    """Produces the partition's published version's changes to the sink's topic, resuming after
    its checkpoint when an earlier run did not finish; a version the sink completed already is
    produced again from its first change (a replay). Returns what the version came to; raises
    SinkError when the brokers or the topic fail it, after checkpointing what they acknowledged."""
    started = time.monotonic()
    # A DuckDB file stays open from one of these transactions to the next: opening it costs more.
    with store.kept_open():
        store.migrate([spec])
        version = published_version(store, spec, partition_key)
        earlier = checkpoint(store, sink, version.source_id)
        at = earlier[0] if earlier and earlier[1] != "completed" else Checkpoint()
        resumed_from = at.produced
        changes = changes_of(store, spec, version)
        _save(store, spec, sink, version, changes, at, "producing", run_id)
        try:
            ensure_topic(settings, sink)
            _produce(store, spec, sink, version, changes, at, settings, run_id, on_checkpoint)
        except Exception as exc:
            _save(store, spec, sink, version, changes, at, "failed", run_id, f"{type(exc).__name__}: {exc}")
            raise
        _save(store, spec, sink, version, changes, at, "completed", run_id)
    return Produced(
        version.source_id,
        partition_key,
        sink.name,
        changes,
        at.produced,
        at.dead_letters,
        resumed_from,
        version.changes_published,
        time.monotonic() - started,
    )


def _produce(
    store: Warehouse,
    spec: SourceSpec,
    sink: KafkaSink,
    version: Version,
    changes: int,
    at: Checkpoint,
    settings: KafkaSettings,
    run_id: str,
    on_checkpoint: Callable[[Checkpoint], None] | None,
) -> None:
    """Sends the version's changes after the checkpoint `at`, moving it (and saving it) as blocks
    are acknowledged."""
    partition_key = version.partition_key
    producer = Producer(settings.producer_config())
    blocks: deque[_Block] = deque()

    def advance() -> None:
        """Moves the checkpoint past every leading block acknowledged whole."""
        moved = False
        while blocks and blocks[0].pending == 0:
            block = blocks.popleft()
            if block.failures:
                blocks.appendleft(block)
                raise SinkError(
                    f"{len(block.failures)} record(s) of {partition_key} not acknowledged by {settings.brokers}: "
                    f"{block.failures[0]}; the checkpoint keeps {at.produced} of {changes}, a retry resumes there"
                )
            if block.rejected:
                record_sink_rejects(store, spec, version.source_id, run_id, sink.name, block.rejected)
            at.dead_letters += len(block.rejected)
            at.produced += block.sent - len(block.rejected)
            at.line = block.last_line
            moved = True
        if moved:
            writer.record(at)

    writer = _CheckpointWriter(
        lambda saved: _save(store, spec, sink, version, changes, saved, "producing", run_id), on_checkpoint
    )
    try:
        batches = store.stream(change_messages_sql(store, spec, version), (at.line,), settings.checkpoint_records)
        _send(producer, sink.topic, blocks, advance, batches)
        deadline = time.monotonic() + settings.delivery_timeout_seconds + settings.connect_timeout_seconds
        while blocks and time.monotonic() < deadline:
            producer.poll(0.1)
            advance()
        if blocks:
            raise SinkError(f"{sum(b.pending for b in blocks)} record(s) of {partition_key} still unacknowledged")
    except BaseException:
        writer.close(raising=False)  # the error that failed the run is the one to see
        raise
    writer.close()


def _send(
    producer: Producer,
    topic: str,
    blocks: deque[_Block],
    advance: Callable[[], None],
    batches: Generator[list[tuple], None, None],
) -> None:
    """Hands every batch to the producer as a block, never more than BLOCKS_IN_FLIGHT ahead of
    the checkpoint; `advance` moves the checkpoint past blocks acknowledged."""
    produce = producer.produce
    for rows in _read_ahead(batches):
        block = _Block(last_line=int(rows[-1][2]))
        callback = block.acknowledged
        refused = 0  # by the producer itself, as too large: never sent, never acknowledged
        for key, value, line in rows:
            try:
                produce(topic, value, key, on_delivery=callback)
            except BufferError:
                # The producer's queue is full: serve acknowledgements until there is room.
                while True:
                    producer.poll(0.05)
                    try:
                        produce(topic, value, key, on_delivery=callback)
                        break
                    except BufferError:
                        continue
            except KafkaException as exc:
                if exc.args[0].code() not in TOO_LARGE:
                    raise
                block.rejected.append((int(line), value, f"over the size limit: {exc.args[0].str()}"))
                refused += 1
        # Acknowledgements served above count down from here: the block is not checked until it is queued.
        block.sent = len(rows)
        block.pending += len(rows) - refused
        blocks.append(block)
        producer.poll(0)
        advance()
        while len(blocks) > BLOCKS_IN_FLIGHT:
            # Never far ahead of the checkpoint: a kill re-sends at most these blocks.
            producer.poll(0.05)
            advance()
