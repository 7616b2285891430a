"""Published changes produced to a real Kafka-protocol broker (Tansu) on every warehouse: each
message is read back by a consumer and compared with the row the table holds; a held version
produces nothing until released; a missing topic, a broker down, a broker going away and an
oversized message each end as the docs say; a producer killed at random points resumes from
its checkpoint and every change reaches the topic, in order per key."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from starlette.testclient import TestClient

from harmonizer_dagster.cli import print_sinks
from harmonizer_dagster.core.publishing import held_versions, release
from harmonizer_dagster.core.secrets import kafka_login
from harmonizer_dagster.core.sinks import (
    BLOCKS_IN_FLIGHT,
    KafkaSettings,
    NotPublished,
    SinkError,
    checkpoint,
    produce_version,
)
from harmonizer_dagster.core.spec import KafkaSink, parse_spec
from harmonizer_dagster.definitions import build_definitions
from harmonizer_dagster.web.metrics import create_metrics_app
from harmonizer_dagster_tests.conftest import SOURCES_DIR, csv_spec, load_file
from harmonizer_dagster_tests.fleet import free_port
from harmonizer_dagster_tests.kafka_broker import Broker, consume_all, topics
from harmonizer_dagster_tests.test_write_audit_publish import land_held_file

SOURCE = "business_registry"
Q3 = "registry_2026-Q3.csv"
Q4 = "registry_2026-Q4.csv.gz"


def new_sink(**kw) -> KafkaSink:
    return KafkaSink(topic=f"registry.changes.{uuid.uuid4().hex[:8]}", **{"create_topic": True, "partitions": 3, **kw})


def with_sink(spec, sink: KafkaSink):
    return replace(spec, sinks=(sink,))


def settings(broker: Broker, **kw) -> KafkaSettings:
    return KafkaSettings(brokers=broker.address, **{"connect_timeout_seconds": 5, **kw})


def table_rows(store, spec, partition_key: str) -> dict[str, dict]:
    """The rows the version of `partition_key` wrote and the table still holds, by key."""
    names = [c.name for c in spec.columns]
    rows = store.query(
        f"SELECT {', '.join(names)}, _source_line, CAST(_row_hash AS VARCHAR), _file_hash "
        f"FROM {store.table(spec.name)} WHERE _partition_key = %s",
        (partition_key,),
    )
    return {row[0]: dict(zip([*names, "line", "row_hash", "file_hash"], row, strict=True)) for row in rows}


def as_json(value):
    return value if value is None or isinstance(value, str | int | bool) else str(value)


def assert_messages_are_the_rows(messages, store, spec, partition_key: str, updated: set[str]) -> None:
    """Every message of the version is exactly one row the version wrote, typed as the table
    types it, with its provenance; every such row has its message."""
    rows = table_rows(store, spec, partition_key)
    (version,) = store.query(
        "SELECT source_id, file_name, source_version FROM {schema}.sources WHERE partition_key = %s "
        "AND status = 'completed'",
        (partition_key,),
    )
    by_key = {}
    for message in messages:
        body = json.loads(message.value())
        if body["provenance"]["partition_key"] == partition_key:
            by_key[message.key().decode()] = body
    assert by_key.keys() == rows.keys()
    for key, body in by_key.items():
        row = rows[key]
        assert body["values"] == {c.name: as_json(row[c.name]) for c in spec.columns}
        assert body["provenance"] == {
            "source": spec.name,
            "file": version[1],
            "file_hash": row["file_hash"],
            "partition_key": partition_key,
            "version": version[2],
            "source_id": version[0],
            "line": row["line"],
            "row_hash": row["row_hash"],
            "change": "updated" if key in updated else "inserted",
        }


def test_a_spec_declares_kafka_sinks_and_rejects_malformed_ones():
    base = {"name": "t", "owner": "o", "format": "csv", "natural_key": ["k"], "columns": {"k": {}}}
    spec = parse_spec({**base, "sinks": [{"kafka": {"topic": "registry.changes", "create_topic": True}}]})
    assert spec.sinks == (KafkaSink("registry.changes", create_topic=True, partitions=1),)
    assert spec.processing == parse_spec(base).processing, "a sink changes nothing that is loaded"
    for sinks, problem in (
        ([{"kafka": {"topic": "a b"}}], "sinks[0].kafka.topic"),
        ([{"kafka": {}}], "sinks[0].kafka.topic': is required"),
        ([{"s3": {"bucket": "b"}}], "the one key `kafka`"),
        ([{"kafka": {"topic": "x", "partitions": 0}}], "at least 1"),
        ([{"kafka": {"topic": "x"}}, {"kafka": {"topic": "x"}}], "names one topic twice"),
    ):
        with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            parse_spec({**base, "sinks": sinks})


def test_a_consumer_reads_exactly_the_changes_each_version_published_in_order_per_key(
    warehouse, specs, landing, tmp_path, kafka
):
    sink = new_sink()
    spec = with_sink(specs[SOURCE], sink)
    load_file(spec, landing, Q3, warehouse, tmp_path / "staging")
    first = produce_version(warehouse, spec, sink, Q3, settings(kafka), "run-q3")
    assert (first.changes, first.produced, first.dead_letters, first.changes_published) == (988, 988, 0, 988)
    before = {k: r["row_hash"] for k, r in table_rows(warehouse, spec, Q3).items()}

    load_file(spec, landing, Q4, warehouse, tmp_path / "staging")
    second = produce_version(warehouse, spec, sink, Q4, settings(kafka), "run-q4")
    inserted, updated = warehouse.query(
        "SELECT records_inserted, records_updated FROM {schema}.sources WHERE partition_key = %s", (Q4,)
    )[0]
    assert second.changes == second.produced == inserted + updated == 60

    messages = consume_all(kafka.address, sink.topic, expected=988 + 60)
    assert len(messages) == 988 + 60, "each change once: no duplicate without a fault"
    q4_keys = set(table_rows(warehouse, spec, Q4))
    assert_messages_are_the_rows(messages, warehouse, spec, Q4, updated={k for k in q4_keys if k in before})
    changes = [json.loads(m.value())["provenance"]["change"] for m in messages]
    assert changes.count("updated") == updated == 49
    # Each key on one partition, its versions in the order they were published.
    per_key = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        per_key[message.key()].append((message.partition(), json.loads(message.value())["provenance"]["source_id"]))
    for key, seen in per_key.items():
        assert len({partition for partition, _ in seen}) == 1, key
        assert [v for _, v in seen] == sorted(v for _, v in seen), key
    assert max(len(seen) for seen in per_key.values()) == 2

    # A replay (a backfill of the partition) sends what the older version still holds: never a
    # row the later version replaced, so a key's latest value stays last on its partition.
    replayed = produce_version(warehouse, spec, sink, Q3, settings(kafka), "replay")
    assert (replayed.resumed_from, replayed.changes, replayed.produced) == (0, 988 - 49, 988 - 49)
    from_q3 = defaultdict(int)
    for message in consume_all(kafka.address, sink.topic, expected=988 + 60 + 939):
        if json.loads(message.value())["provenance"]["partition_key"] == Q3:
            from_q3[message.key().decode()] += 1
    assert {key for key, count in from_q3.items() if count == 2} == set(table_rows(warehouse, spec, Q3))
    assert sum(from_q3.values()) == 988 + 939


def test_a_held_version_produces_nothing_until_a_steward_releases_it(warehouse, specs, landing, tmp_path, kafka):
    sink = new_sink()
    spec = with_sink(specs[SOURCE], sink)
    load_file(spec, landing, Q3, warehouse, tmp_path / "staging")
    keys = [k for (k,) in warehouse.query("SELECT corp_number FROM {schema}.business_registry ORDER BY 1 LIMIT 4")]
    land_held_file(landing, "held.csv", keys, "NOWHERE")
    load_file(spec, landing, "held.csv", warehouse, tmp_path / "staging")
    with pytest.raises(NotPublished, match="held"):
        produce_version(warehouse, spec, sink, "held.csv", settings(kafka), "run")
    assert sink.topic not in topics(kafka.address), "nothing was produced, not even the topic"

    (held,) = held_versions(warehouse)
    release(warehouse, spec, held.source_id, "steward", "expected this quarter")
    produced = produce_version(warehouse, spec, sink, "held.csv", settings(kafka), "run")
    messages = consume_all(kafka.address, sink.topic, expected=4)
    assert produced.produced == len(messages) == 4
    assert {m.key().decode() for m in messages} == set(keys)
    assert {json.loads(m.value())["values"]["home_office_city"] for m in messages} == {"NOWHERE"}
    assert {json.loads(m.value())["provenance"]["change"] for m in messages} == {"updated"}


def test_a_missing_topic_fails_clearly_unless_the_spec_says_to_create_it(warehouse, specs, landing, tmp_path, kafka):
    sink = new_sink(create_topic=False)
    spec = with_sink(specs[SOURCE], sink)
    load_file(spec, landing, Q3, warehouse, tmp_path / "staging")
    with pytest.raises(SinkError, match=f"topic {sink.topic} does not exist.*create_topic: true"):
        produce_version(warehouse, spec, sink, Q3, settings(kafka), "run")
    assert sink.topic not in topics(kafka.address)

    created = replace(sink, create_topic=True, partitions=4)
    produce_version(warehouse, with_sink(spec, created), created, Q3, settings(kafka), "run")
    assert len(consume_all(kafka.address, sink.topic, expected=988)) == 988


def test_a_broker_down_when_the_run_starts_fails_it_clearly_and_a_later_retry_produces_everything(
    warehouse, specs, landing, tmp_path
):
    sink = new_sink()
    spec = with_sink(specs[SOURCE], sink)
    load_file(spec, landing, Q3, warehouse, tmp_path / "staging")
    broker = Broker(tmp_path / "tansu.log")  # not started yet
    started = time.monotonic()
    with pytest.raises(SinkError, match=f"Kafka brokers {broker.address} not reachable within 2 s"):
        produce_version(warehouse, spec, sink, Q3, settings(broker, connect_timeout_seconds=2), "run")
    assert time.monotonic() - started < 15
    broker.start()
    try:
        produce_version(warehouse, spec, sink, Q3, settings(broker), "retry")
        assert len(consume_all(broker.address, sink.topic, expected=988)) == 988
    finally:
        broker.stop()


def test_an_oversized_message_becomes_a_dead_letter_with_its_reason_and_the_rest_are_produced(
    warehouse, specs, landing, tmp_path, kafka
):
    sink = new_sink()
    spec = with_sink(specs[SOURCE], sink)
    sample = pl.read_csv(landing / SOURCE / Q3, infer_schema=False)
    big = sample["Corp Number"][5]
    sample.with_columns(
        pl.when(pl.col("Corp Number") == big)
        .then(pl.lit("Suite " + "9" * 3000))
        .otherwise(pl.col("Home Office Address"))
        .alias("Home Office Address")
    ).write_csv(landing / SOURCE / "big.csv")
    load_file(spec, landing, "big.csv", warehouse, tmp_path / "staging")
    produced = produce_version(warehouse, spec, sink, "big.csv", settings(kafka, max_message_bytes=2000), "run")
    assert (produced.produced, produced.dead_letters, produced.complete) == (987, 1, True)
    messages = consume_all(kafka.address, sink.topic, expected=987)
    assert len(messages) == 987 and big.encode() not in {m.key() for m in messages}
    (letter,) = warehouse.query(
        "SELECT error_type, error_message, record_data FROM {schema}.failed_records WHERE error_type = 'sink_rejected'"
    )
    assert letter[1].startswith(f"{sink.name}: over the size limit") and "too large" in letter[1]
    assert json.loads(letter[2])["values"]["corp_number"] == big


def land_copies(landing, name: str, copies: int) -> None:
    """The sample `copies` times over under distinct keys (a digit before each corp number)."""
    sample = pl.read_csv(landing / SOURCE / Q3, infer_schema=False)
    pl.concat(
        sample.with_columns((pl.lit(str(copy)) + pl.col("Corp Number")).alias("Corp Number"))
        for copy in range(1, copies + 1)
    ).write_csv(landing / SOURCE / name)


def test_a_broker_going_away_mid_produce_fails_the_run_after_its_timeout_and_a_retry_resumes(
    warehouse, specs, landing, tmp_path, monkeypatch
):
    sink = new_sink()
    spec = with_sink(specs[SOURCE], sink)
    land_copies(landing, "big.csv", 9)
    load_file(spec, landing, "big.csv", warehouse, tmp_path / "staging")
    rows = table_rows(warehouse, spec, "big.csv")
    broker = Broker(tmp_path / "tansu.log").start()
    read = warehouse.stream

    def going_away(*args, **kwargs):
        """The version's rows, the broker pausing once the first block of them is acknowledged."""
        for number, block in enumerate(read(*args, **kwargs)):
            if number == 1:
                time.sleep(1)
                broker.pause()
            yield block

    monkeypatch.setattr(warehouse, "stream", going_away)
    try:
        quick = settings(broker, checkpoint_records=100, delivery_timeout_seconds=3)
        with pytest.raises(SinkError, match=f"record\\(s\\) of big.csv not acknowledged by {broker.address}"):
            produce_version(warehouse, spec, sink, "big.csv", quick, "run")
        monkeypatch.setattr(warehouse, "stream", read)
        at, status = checkpoint(warehouse, sink, 1)
        assert (status, at.produced) == ("failed", 100), "the block acknowledged before the broker went away"
        broker.resume()
        retried = produce_version(warehouse, spec, sink, "big.csv", quick, "retry")
        assert (retried.resumed_from, retried.produced) == (at.produced, len(rows))
        messages = consume_all(broker.address, sink.topic, expected=len(rows))
        assert {m.key().decode() for m in messages} == rows.keys()
    finally:
        broker.stop()


KILLED_PRODUCER = """
import sys
from dataclasses import replace
from pathlib import Path
from pathlib import Path
from harmonizer_dagster.core.sinks import KafkaSettings, produce_version
from harmonizer_dagster.core.spec import KafkaSink, load_spec
from harmonizer_dagster.core.warehouse import open_warehouse

url, schema, topic, brokers, spec_file, partition_key = sys.argv[1:]
sink = KafkaSink(topic, create_topic=True, partitions=3)
spec = replace(load_spec(Path(spec_file)), sinks=(sink,))
settings = KafkaSettings(brokers, checkpoint_records=500)
report = lambda at: print("checkpoint", at.produced, flush=True)
produced = produce_version(open_warehouse(url, schema), spec, sink, partition_key, settings, "run", report)
print("done", produced.produced, "resumed from", produced.resumed_from)
"""


def warehouse_url(store) -> str:
    return getattr(store, "url", None) or f"duckdb:///{store.path}"


def test_a_producer_killed_at_random_points_resumes_and_every_change_arrives_at_least_once_in_order(
    warehouse, specs, landing, tmp_path, kafka
):
    """The producing process is killed (SIGKILL) at random points, several times, then left to
    finish: every change is on the topic at least once, the copies of one key on one partition
    and identical, and what a kill re-sends is bounded by the checkpoint interval."""
    sink = new_sink()
    spec = with_sink(specs[SOURCE], sink)
    land_copies(landing, "big.csv", 30)
    load_file(spec, landing, "big.csv", warehouse, tmp_path / "staging")
    rows = table_rows(warehouse, spec, "big.csv")
    arguments = [warehouse_url(warehouse), warehouse.schema_name, sink.topic, kafka.address, str(spec.path), "big.csv"]
    command = [sys.executable, "-c", KILLED_PRODUCER, *arguments]
    rng = random.Random(28)
    positions, kills = [], 4
    for _ in range(kills):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Killed within the block after the first or second checkpoint this run reports (the
        # producer acknowledges a few blocks at a time: 4 kills stay short of the last one).
        for _ in range(rng.randint(1, 2)):
            assert process.stdout.readline().startswith("checkpoint"), process.stderr.read()
        time.sleep(rng.uniform(0, 0.25))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        positions.append(checkpoint(warehouse, sink, 1)[0].produced)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split()[-5:] == ["done", str(len(rows)), "resumed", "from", str(positions[-1])]
    assert positions == sorted(positions) and positions[-1] < len(rows), "killed mid-produce, never moving back"

    messages = consume_all(kafka.address, sink.topic, expected=len(rows))
    per_key = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        per_key[message.key().decode()].append((message.partition(), message.value()))
    assert per_key.keys() == rows.keys(), "every change at least once"
    for key, copies in per_key.items():
        assert len({partition for partition, _ in copies}) == 1, key
        assert len({value for _, value in copies}) == 1, f"{key}: copies of the one change only"
    duplicates = len(messages) - len(rows)
    print(f"killed at checkpoints {positions}; {duplicates} duplicate(s) among {len(messages)} messages")
    # Each kill re-sends what followed its checkpoint: the blocks in flight after it, and one whose
    # checkpoint was being saved.
    assert duplicates <= kills * (BLOCKS_IN_FLIGHT + 2) * 500


def sources_with_sink(tmp_path, topic: str) -> Path:
    """The shipped specs, the registry's declaring a Kafka sink."""
    folder = tmp_path / "sources"
    shutil.copytree(SOURCES_DIR, folder)
    spec_file = folder / f"{SOURCE}.yaml"
    spec_file.write_text(
        spec_file.read_text() + f"sinks:\n  - kafka:\n      topic: {topic}\n      create_topic: true\n"
    )
    return folder


def test_the_kafka_asset_follows_the_published_one_and_its_failure_leaves_the_publish_alone(
    environment, instance, monkeypatch, tmp_path, kafka
):
    topic = new_sink().topic
    monkeypatch.setenv("HARMONIZER_SOURCES_DIR", str(sources_with_sink(tmp_path, topic)))
    monkeypatch.setenv("HARMONIZER_KAFKA_BROKERS", f"127.0.0.1:{free_port()}")  # nothing listens there
    defs = build_definitions()
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {f"{name}_kafka" for name in ("business_registry", "court_records", "news_articles")} & keys == {
        "business_registry_kafka"
    }, "only the source declaring a sink has one"
    sink_asset = defs.resolve_assets_def("business_registry_kafka")
    assert sink_asset.partitions_def.name == "business_registry_files"
    assert {key.name for key in sink_asset.check_keys} == {"records_produced"}
    assert dg.AssetKey("business_registry_published") in sink_asset.asset_deps[dg.AssetKey("business_registry_kafka")]

    instance.add_dynamic_partitions("business_registry_files", [Q3])
    load = defs.resolve_job_def("load_business_registry")
    assert load.execute_in_process(instance=instance, partition_key=Q3).success
    produce = defs.resolve_implicit_global_asset_job_def()
    selection = [dg.AssetKey("business_registry_kafka")]
    down = produce.execute_in_process(
        instance=instance, partition_key=Q3, asset_selection=selection, raise_on_error=False
    )
    assert not down.success
    failure = next(e for e in down.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "not reachable" in failure.step_failure_data.error.message
    with duckdb.connect(str(environment), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM harmonizer.business_registry").fetchone() == (988,)

    monkeypatch.setenv("HARMONIZER_KAFKA_BROKERS", kafka.address)
    produce = build_definitions().resolve_implicit_global_asset_job_def()
    assert produce.execute_in_process(instance=instance, partition_key=Q3, asset_selection=selection).success
    event = instance.get_latest_materialization_event(dg.AssetKey("business_registry_kafka"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert (event.asset_materialization.partition, metadata["produced"], metadata["changes"]) == (Q3, 988, 988)
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("business_registry_kafka"), "records_produced")]
    )
    (execution,) = check.values()
    assert execution.event.dagster_event.event_specific_data.passed
    assert len(consume_all(kafka.address, topic, expected=988)) == 988


def test_the_sasl_login_comes_from_a_secret_and_an_unusable_one_is_refused_without_its_value():
    assert kafka_login('{"username": "producer", "password": "s3cr3t-value"}') == ("producer", "s3cr3t-value")
    with pytest.raises(ValueError) as refused:
        kafka_login('{"user": "producer", "pass": "s3cr3t-value"}')
    assert "s3cr3t-value" not in str(refused.value)
    config = KafkaSettings("b:9093", "SASL_SSL", "SCRAM-SHA-512", "producer", "s3cr3t-value").producer_config()
    assert (config["sasl.mechanism"], config["sasl.username"], config["sasl.password"]) == (
        "SCRAM-SHA-512",
        "producer",
        "s3cr3t-value",
    )
    assert (config["acks"], config["enable.idempotence"], config["compression.type"]) == ("all", True, "gzip")
    assert "s3cr3t-value" not in repr(KafkaSettings("b:9093", password="s3cr3t-value"))


def test_metrics_and_the_status_command_show_each_sinks_records_errors_and_checkpoint(
    warehouse, specs, landing, tmp_path, kafka, capsys
):
    sink, missing = new_sink(), new_sink(create_topic=False)
    spec = replace(specs[SOURCE], sinks=(sink, missing))
    load_file(spec, landing, Q3, warehouse, tmp_path / "staging")
    produce_version(warehouse, spec, sink, Q3, settings(kafka), "run")
    with pytest.raises(SinkError):
        produce_version(warehouse, spec, missing, Q3, settings(kafka), "run")

    scraped = TestClient(create_metrics_app(warehouse)).get("/metrics").text
    produced = f'harmonizer_sink_records_produced_total{{sink="{sink.name}",source="{SOURCE}"}} 988.0'
    assert produced in scraped
    assert f'harmonizer_sink_versions{{sink="{missing.name}",source="{SOURCE}",status="failed"}} 1.0' in scraped
    assert f'harmonizer_sink_versions{{sink="{sink.name}",source="{SOURCE}",status="completed"}} 1.0' in scraped
    position = f'partition="{Q3}",sink="{missing.name}",source="{SOURCE}",status="failed"'
    assert f"harmonizer_sink_checkpoint_records{{{position}}} 0.0" in scraped
    assert f"harmonizer_sink_changes{{{position}}} 988.0" in scraped
    assert f'sink="{sink.name}",source="{SOURCE}",status="completed"}}' not in scraped.split("checkpoint_records")[-1]

    print_sinks(warehouse)
    shown = capsys.readouterr().out.splitlines()
    failed = next(i for i, line in enumerate(shown) if missing.name in line)
    assert shown[failed].split()[3:6] == ["failed", "0", "988"]
    assert f"topic {missing.topic} does not exist" in shown[failed + 1]
    assert any(sink.name in line and line.split()[3:6] == ["completed", "988", "988"] for line in shown)


def test_values_are_typed_as_the_table_types_them_and_a_composite_key_is_a_json_array(warehouse, tmp_path, kafka):
    sink = new_sink()
    spec = replace(
        csv_spec(
            {
                "region": {},
                "k": {"type": "integer"},
                "amount": {"type": "decimal", "precision": 10, "scale": 2},
                "active": {"type": "boolean"},
                "opened": {"type": "date"},
                "seen": {"type": "timestamp"},
                "note": {},
            },
            natural_key=("region", "k"),
        ),
        sinks=(sink,),
    )
    folder = tmp_path / "landing" / spec.name
    folder.mkdir(parents=True)
    (folder / "f.csv").write_text(
        "region,k,amount,active,opened,seen,note\n"
        'EU,1,12.5,true,2026-01-02,2026-01-02 03:04:05,"say ""hi"""\n'
        "US,2,-0.01,false,1999-12-31,1999-12-31T23:59:59,\n"
    )
    load_file(spec, tmp_path / "landing", "f.csv", warehouse, tmp_path / "staging")
    produce_version(warehouse, spec, sink, "f.csv", settings(kafka), "run")
    messages = {m.key().decode(): json.loads(m.value())["values"] for m in consume_all(kafka.address, sink.topic, 2)}
    assert messages == {
        '["EU","1"]': {
            "region": "EU",
            "k": 1,
            "amount": "12.50",
            "active": True,
            "opened": "2026-01-02",
            "seen": "2026-01-02 03:04:05",
            "note": 'say "hi"',
        },
        '["US","2"]': {
            "region": "US",
            "k": 2,
            "amount": "-0.01",
            "active": False,
            "opened": "1999-12-31",
            "seen": "1999-12-31 23:59:59",
            "note": None,
        },
    }


def test_in_production_the_sasl_login_comes_from_secrets_manager(s3_endpoint, s3_bucket, monkeypatch):
    """As the warehouse login does: the code location names the secret, each run reads it."""
    import boto3

    from harmonizer_dagster.definitions import kafka_resource

    client = boto3.client("secretsmanager", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"harmonizer/kafka-{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=name, SecretString=json.dumps({"username": "producer", "password": "s3cr3t-kafka"}))
    for variable, value in (
        ("HARMONIZER_KAFKA_BROKERS", "broker-1:9096,broker-2:9096"),
        ("HARMONIZER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("HARMONIZER_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("HARMONIZER_KAFKA_SECRET_ID", name),
        ("HARMONIZER_SECRETS_ENDPOINT_URL", s3_endpoint),
    ):
        monkeypatch.setenv(variable, value)
    resource = kafka_resource()
    assert "s3cr3t-kafka" not in repr(resource)
    with dg.build_resources({"kafka": resource}) as resources:
        config = resources.kafka.settings().producer_config()
    assert {k: config[k] for k in ("bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.username")} == {
        "bootstrap.servers": "broker-1:9096,broker-2:9096",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "producer",
    }
    assert config["sasl.password"] == "s3cr3t-kafka"


def test_a_scrape_of_a_warehouse_not_migrated_to_sinks_yet_serves_everything_else(warehouse, specs):
    """`harmonizer metrics serve` migrates nothing: it may read a warehouse the loads of an
    earlier release left."""
    warehouse.migrate([specs[SOURCE]])
    warehouse.query("DROP TABLE {schema}.sink_checkpoints")
    response = TestClient(create_metrics_app(warehouse)).get("/metrics")
    assert response.status_code == 200
    assert "harmonizer_scrape_warehouse_busy 0.0" in response.text
    assert "harmonizer_sink_versions{" not in response.text
