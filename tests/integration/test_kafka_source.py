"""Kafka ingest against a real Kafka-protocol broker (Tansu): devices produce raw messages to a topic,
`fleetstream up --kafka-source` stores them exactly once, dead-letters what is bad, and commits
offsets only once the readings are durable."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ..servers import Tansu
from ._mqtt import dead_letters
from ._support import (
    ServerProcess,
    at,
    db_path,
    metrics,
    prometheus,
    read_db,
    reading,
    stop_cleanly,
    wait_for,
)

pytestmark = pytest.mark.integration

kafka = pytest.importorskip("confluent_kafka")
admin_mod = pytest.importorskip("confluent_kafka.admin")


class Producer:
    """A confluent-kafka producer that waits for every message's acknowledgement (acks=all)."""

    def __init__(self, broker: Tansu) -> None:
        self.producer = kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
        self.failed: list[str] = []

    def send(self, topic: str, value: Any, key: str | None = None) -> None:
        body = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.producer.produce(topic, body, key=key, on_delivery=self._delivered)
        self.producer.poll(0)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))

    def flush(self) -> None:
        assert self.producer.flush(15) == 0
        assert self.failed == []


def create_topic(broker: Tansu, topic: str, partitions: int = 1) -> None:
    admin = admin_mod.AdminClient({"bootstrap.servers": broker.bootstrap})  # kept while futures resolve
    futures = admin.create_topics(
        [admin_mod.NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    )
    for future in futures.values():
        future.result(15)


def kafka_status(srv: ServerProcess) -> dict[str, Any]:
    status, body = srv.call("GET", "/readyz")
    assert status == 200, body
    result: dict[str, Any] = body["sources"]["kafka"]
    return result


def count_of(srv: ServerProcess, device: str | list[str], sensor: str = "temperature") -> int:
    found: int = metrics(srv, device, agg="count").get(sensor, {}).get("count", 0)
    return found


@pytest.fixture
def topic(module_tansu: Tansu, dev: str) -> str:
    create_topic(module_tansu, dev, partitions=2)
    return dev


@pytest.fixture
def producer(module_tansu: Tansu) -> Producer:
    return Producer(module_tansu)


def test_messages_in_every_format_are_stored_exactly_once(
    module_tansu: Tansu, start: Callable[..., ServerProcess], topic: str, producer: Producer, dev: str
) -> None:
    srv = start("--kafka-source", module_tansu.url(topic))
    values = [20.0 + i for i in range(20)]
    for i, value in enumerate(values):
        producer.send(topic, reading(dev, i, value), key=dev)
    batch = [reading(f"{dev}-b", i, 1000.0 + i, sensor="pressure") for i in range(3)]
    producer.send(topic, batch, key=f"{dev}-b")
    ndjson = b"\n".join(json.dumps(reading(f"{dev}-n", i, float(i))).encode() for i in range(4))
    producer.send(topic, ndjson)
    producer.flush()

    wait_for(
        lambda: (
            count_of(srv, dev) == 20
            and count_of(srv, f"{dev}-b", "pressure") == 3
            and count_of(srv, f"{dev}-n") == 4
        ),
        timeout=20,
    )
    assert metrics(srv, dev, agg="count,min,max,sum")["temperature"] == {
        "count": 20,
        "min": 20.0,
        "max": 39.0,
        "sum": sum(values),
    }
    status = wait_for(lambda: (s := kafka_status(srv))["messages_committed"] == 22 and s)
    assert status == {
        "broker": module_tansu.url(topic),
        "topic": topic,
        "group": "fleetstream-gateway",
        "connected": True,
        "partitions": [0, 1],
        "messages_received": 22,
        "messages_committed": 22,
        "in_progress": 0,
        "dead_letters": 0,
        "retries": 0,
        "commit_failures": 0,
        "last_error": None,
    }
    samples = prometheus(srv)
    assert samples["fleetstream_kafka_source_messages_committed_total"] == 22
    assert samples["fleetstream_kafka_source_uncommitted"] == 0
    stop_cleanly(srv)
    rows = read_db(db_path(srv), "SELECT count(*) FROM readings WHERE device_id LIKE ?", [f"{dev}%"])
    assert rows == [(27,)]


def test_the_seeds_tagged_events_take_the_message_time_and_the_key_as_device(
    module_tansu: Tansu, start: Callable[..., ServerProcess], topic: str, producer: Producer, dev: str
) -> None:
    srv = start("--kafka-source", module_tansu.url(topic))
    before = datetime.now(UTC) - timedelta(seconds=1)
    producer.send(topic, {"id": dev, "event": "Startup"}, key=dev)
    producer.send(topic, {"id": dev, "event": {"Heartbeat": {"cpu_usage": 79.1, "mem_usage": 10.7}}}, key=dev)
    producer.send(topic, {"id": dev, "event": {"Temperature": {"temp": 21.5}}}, key=dev)
    producer.flush()
    time.sleep(0.01)  # a later message time: one sensor's two values in one millisecond are one reading
    producer.send(topic, {"event": {"Temperature": {"temp": 22.5}}}, key=dev)  # the id from the key
    producer.flush()
    window = {"start": before, "end": datetime.now(UTC) + timedelta(seconds=1), "agg": "count,sum"}

    wait_for(lambda: metrics(srv, dev, **window).get("temperature", {}).get("count") == 2, timeout=20)
    assert metrics(srv, dev, **window) == {
        "temperature": {"count": 2, "sum": 44.0},
        "cpu_usage": {"count": 1, "sum": 79.1},
        "mem_usage": {"count": 1, "sum": 10.7},
    }
    assert kafka_status(srv)["dead_letters"] == 0


def test_a_bad_message_is_dead_lettered_and_the_next_good_one_stored(
    module_tansu: Tansu, start: Callable[..., ServerProcess], dev: str, producer: Producer
) -> None:
    create_topic(module_tansu, dev, partitions=1)
    srv = start("--kafka-source", module_tansu.url(dev))
    bad = b'{"device_id": "x", "sensor": "temperature", "value": 1.0'
    producer.send(dev, bad)
    producer.send(dev, reading(dev, 1, 42.0))
    producer.flush()

    wait_for(lambda: count_of(srv, dev) == 1, timeout=20)
    [letter] = wait_for(lambda: dead_letters(srv, dev))
    n = len(bad)
    assert (
        letter["reason"] == f"malformed JSON at line 1, column {n + 1} (byte {n}): input data was truncated"
    )
    assert (letter["source"], letter["topic"]) == ("kafka", dev)
    assert base64.b64decode(letter["payload_base64"]) == bad
    assert metrics(srv, dev, agg="max")["temperature"]["max"] == 42.0
    status = wait_for(lambda: (s := kafka_status(srv))["messages_committed"] == 2 and s)
    assert status["dead_letters"] == 1


@pytest.mark.slow
def test_a_kill_mid_stream_loses_nothing_and_stores_nothing_twice(
    module_tansu: Tansu, start: Callable[..., ServerProcess], dev: str, producer: Producer, tmp_path: Any
) -> None:
    create_topic(module_tansu, dev, partitions=2)
    url, data = module_tansu.url(dev), tmp_path / "d"
    devices = [f"{dev}-{d}" for d in range(50)]
    total = 3000

    def send(numbers: range) -> None:
        # no msg_id: a re-delivered reading is recognised by device, sensor and timestamp
        for i in numbers:
            producer.send(
                dev, {"device_id": devices[i % 50], "ts": at(i), "sensor": "temperature", "value": i}
            )
        producer.flush()

    first = start("--kafka-source", url, data=data)
    send(range(total // 2))
    wait_for(lambda: kafka_status(first)["messages_committed"] > 0, timeout=20, interval=0.01)
    first.stop("kill")  # mid-stream: consumed, stored and uncommitted messages in hand
    send(range(total // 2, total))

    second = start("--kafka-source", url, data=data)
    wait_for(lambda: count_of(second, devices) == total, timeout=60, interval=0.5)
    stop_cleanly(second)
    rows = read_db(
        db_path(second),
        "SELECT count(*), count(DISTINCT ts), min(value), max(value) FROM readings WHERE device_id LIKE ?",
        [f"{dev}-%"],
    )
    assert rows == [(total, total, 0.0, float(total - 1))]


def test_back_pressure_delays_commits_and_loses_nothing(
    module_tansu: Tansu, start: Callable[..., ServerProcess], topic: str, producer: Producer, dev: str
) -> None:
    # A queue of 2 readings: the messages of a polled batch are refused (Overloaded) and must wait.
    limits = {"FLEETSTREAM_INGEST__QUEUE_MAX_RECORDS": "2", "FLEETSTREAM_INGEST__MAX_BATCH_ITEMS": "2"}
    srv = start("--kafka-source", module_tansu.url(topic), env=limits)
    total = 100
    for i in range(total):
        producer.send(topic, reading(dev, i, float(i)), key=dev)
    producer.flush()

    wait_for(lambda: count_of(srv, dev) == total, timeout=30)
    status = wait_for(lambda: (s := kafka_status(srv))["messages_committed"] == total and s)
    assert status["retries"] > 0
    assert (status["messages_received"], status["dead_letters"]) == (total, 0)
    assert metrics(srv, dev, agg="count,sum")["temperature"] == {"count": total, "sum": sum(range(total))}
