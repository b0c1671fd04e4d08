"""MQTT ingest against a real mosquitto: devices publish with QoS 1, `fleetstream up --mqtt` stores,
dead-letters what is bad, survives a broker restart and back-pressure without losing or doubling."""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..servers import Mosquitto
from ._mqtt import Publisher, dead_letters, mqtt_status
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


@pytest.fixture(scope="module")
def mqtt_server(
    module_mosquitto: Mosquitto,
    tmp_path_factory: pytest.TempPathFactory,
    launch_server: Callable[..., ServerProcess],
) -> Iterator[ServerProcess]:
    """One ``fleetstream up --mqtt`` on the module's broker; tests keep apart by device id."""
    data = tmp_path_factory.mktemp("mqtt") / "data"
    srv = launch_server(data, "--no-simulator", "--mqtt", module_mosquitto.url)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def publisher(module_mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(module_mosquitto.port)
    try:
        yield pub
    finally:
        pub.close()


def count_of(srv: ServerProcess, device: str | list[str], sensor: str = "temperature") -> int:
    found: int = metrics(srv, device, agg="count").get(sensor, {}).get("count", 0)
    return found


def test_readings_published_over_mqtt_are_stored_and_queryable(
    mqtt_server: ServerProcess, publisher: Publisher, dev: str
) -> None:
    values = [20.0 + 0.5 * i for i in range(30)]
    for i, value in enumerate(values):
        publisher.publish(f"devices/{dev}/telemetry", reading(dev, i, value))
    batch = [
        {"device_id": f"{dev}-b", "timestamp": at(0), "pressure": 1000.5, "tag": "Barometer"},
        {"device_id": f"{dev}-b", "timestamp": at(1), "pressure": 1002.5, "tag": "Barometer"},
    ]
    publisher.publish(f"devices/{dev}-b/telemetry", batch)
    publisher.wait_acked()

    wait_for(lambda: count_of(mqtt_server, dev) == 30 and count_of(mqtt_server, f"{dev}-b", "pressure") == 2)

    got = metrics(mqtt_server, dev, agg="count,min,max,avg")["temperature"]
    assert got == {"count": 30, "min": 20.0, "max": 34.5, "avg": pytest.approx(statistics.fmean(values))}
    pressure = metrics(mqtt_server, f"{dev}-b", agg="count,min,max")["pressure"]
    assert pressure == {"count": 2, "min": 1000.5, "max": 1002.5}


def test_the_device_id_comes_from_the_topic_when_the_payload_has_none(
    mqtt_server: ServerProcess, publisher: Publisher, dev: str
) -> None:
    typed = {"timestamp": at(5), "temperature": 21.5, "tag": "Thermostat"}
    canonical = {"timestamp": at(6), "sensor": "temperature", "value": 22.5}
    same_id = {"device_id": dev, "timestamp": at(7), "sensor": "temperature", "value": 23.5}
    for payload in (typed, canonical, same_id):
        publisher.publish(f"devices/{dev}/telemetry", payload)
    publisher.wait_acked()

    wait_for(lambda: count_of(mqtt_server, dev) == 3)
    assert metrics(mqtt_server, dev, agg="count,min,max")["temperature"] == {
        "count": 3,
        "min": 21.5,
        "max": 23.5,
    }


def test_a_bad_payload_is_dead_lettered_and_the_subscription_goes_on(
    mqtt_server: ServerProcess, publisher: Publisher, dev: str
) -> None:
    topic = f"devices/{dev}/telemetry"
    malformed = b'{"timestamp": "2023-03-28T20:00:00Z", "sensor": "temperature", "value": 1.0'
    not_utf8 = b"\xff\xfe garbage"
    publisher.publish(topic, malformed)
    publisher.publish(topic, not_utf8)
    publisher.publish(topic, reading(dev, 1, 42.0))
    publisher.wait_acked()

    wait_for(lambda: count_of(mqtt_server, dev) == 1)
    letters = wait_for(
        lambda: len(dead_letters(mqtt_server, topic)) == 2 and dead_letters(mqtt_server, topic)
    )
    newest, oldest = letters
    n = len(malformed)
    assert (
        oldest["reason"] == f"malformed JSON at line 1, column {n + 1} (byte {n}): input data was truncated"
    )
    assert (oldest["source"], oldest["topic"], oldest["errors"]) == ("mqtt", topic, [])
    assert (oldest["payload"], base64.b64decode(oldest["payload_base64"])) == (malformed.decode(), malformed)
    assert newest["reason"].startswith("malformed JSON at line 1, column 1 (byte 0)")
    assert (newest["payload"], base64.b64decode(newest["payload_base64"]), newest["size"]) == (
        None,
        not_utf8,
        len(not_utf8),
    )
    assert metrics(mqtt_server, dev, agg="max")["temperature"]["max"] == 42.0


def test_a_partly_bad_payload_keeps_its_good_items(
    mqtt_server: ServerProcess, publisher: Publisher, dev: str
) -> None:
    topic = f"devices/{dev}/telemetry"
    payload = [reading(dev, 0, 10.0), reading(dev, 1, "abc"), reading("someone-else", 2, 1.0)]
    publisher.publish(topic, payload)
    publisher.wait_acked()

    [letter] = wait_for(lambda: dead_letters(mqtt_server, topic))
    assert letter["errors"] == [
        {"index": 1, "error": 'value: expected a finite number, got "abc"'},
        {"index": 2, "error": f'device_id: "someone-else" does not match the device in the URL ({dev})'},
    ]
    assert letter["reason"] == '2 of 3 items rejected; first: value: expected a finite number, got "abc"'
    wait_for(lambda: count_of(mqtt_server, dev) == 1)
    assert metrics(mqtt_server, dev, agg="count,max")["temperature"] == {"count": 1, "max": 10.0}
    assert count_of(mqtt_server, "someone-else") == 0


def test_dead_letters_filter_by_source_and_limit(
    mqtt_server: ServerProcess, publisher: Publisher, dev: str
) -> None:
    topic = f"devices/{dev}/telemetry"
    for n in range(3):
        publisher.publish(topic, f"not json {n}".encode())
    publisher.wait_acked()
    wait_for(lambda: len(dead_letters(mqtt_server, topic)) == 3)

    assert [d["payload"] for d in dead_letters(mqtt_server, topic, source="mqtt")] == [
        "not json 2",
        "not json 1",
        "not json 0",
    ]
    assert dead_letters(mqtt_server, source="kafka") == []
    assert len(dead_letters(mqtt_server, limit=1)) == 1
    assert mqtt_server.call("GET", "/api/v1/dead-letters?limit=0")[0] == 422


def test_status_and_prometheus_show_the_mqtt_source(
    mosquitto: Mosquitto, start: Callable[..., ServerProcess], dev: str
) -> None:
    srv = start("--mqtt", f"{mosquitto.url}?client_id={dev}")
    pub = Publisher(mosquitto.port)
    for i in range(3):
        pub.publish(f"devices/{dev}/telemetry", reading(dev, i, float(i)))
    pub.publish(f"devices/{dev}/telemetry", b"[")
    pub.wait_acked()
    pub.close()

    status = wait_for(lambda: (s := mqtt_status(srv))["messages_acked"] == 4 and s)
    assert status == {
        "broker": mosquitto.url,
        "topic": "devices/+/telemetry",
        "client_id": dev,
        "connected": True,
        "messages_received": 4,
        "messages_acked": 4,
        "in_progress": 0,
        "dead_letters": 1,
        "retries": 0,
        "reconnects": 0,
        "last_error": None,
    }
    samples = prometheus(srv)
    assert {k: v for k, v in samples.items() if k.startswith("fleetstream_mqtt_")} == {
        "fleetstream_mqtt_connected": 1,
        "fleetstream_mqtt_messages_received_total": 4,
        "fleetstream_mqtt_messages_acked_total": 4,
        "fleetstream_mqtt_dead_letters_total": 1,
        "fleetstream_mqtt_retries_total": 0,
        "fleetstream_mqtt_reconnects_total": 0,
    }
    assert samples["fleetstream_readings_total"] == 3  # the same pipeline as HTTP


def test_gateways_share_the_load_through_a_shared_subscription(
    mosquitto: Mosquitto, start: Callable[..., ServerProcess], tmp_path: Any, dev: str
) -> None:
    shared = ("--mqtt", mosquitto.url, "--mqtt-topic", "$share/fleetstream/devices/+/telemetry")
    first = start(*shared, data=tmp_path / "a")
    second = start(*shared, data=tmp_path / "b")
    pub = Publisher(mosquitto.port)
    devices = [f"{dev}-{i}" for i in range(40)]
    for i, device in enumerate(devices):
        pub.publish(
            f"devices/{device}/telemetry", {"timestamp": at(i), "sensor": "temperature", "value": 1.0}
        )
    pub.wait_acked()
    pub.close()

    counts = wait_for(
        lambda: (c := (count_of(first, devices), count_of(second, devices))) and sum(c) == 40 and c
    )
    assert min(counts) > 0  # both took a share, each message went to one of them
    assert mqtt_status(first)["messages_acked"] + mqtt_status(second)["messages_acked"] == 40


@pytest.mark.slow
def test_a_broker_restart_loses_nothing_acknowledged_and_stores_nothing_twice(
    launch_mosquitto: Callable[..., Mosquitto], start: Callable[..., ServerProcess], dev: str
) -> None:
    broker = launch_mosquitto(persistent=True)  # a broker that keeps what it acknowledged
    srv = start("--mqtt", broker.url)
    pub = Publisher(broker.port, client_id=f"{dev}-publisher")
    total = 400
    for i in range(total):
        pub.publish(f"devices/{dev}/telemetry", reading(dev, i, float(i), msg_id=f"m-{i}"))
        if i == total // 3:
            broker.restart()  # mid-stream: messages in flight both ways, some queued at the broker
        time.sleep(0.002)
    pub.wait_acked(30)
    pub.close()

    wait_for(lambda: count_of(srv, dev) == total, timeout=30)
    status = mqtt_status(srv)
    assert status["reconnects"] >= 1
    assert status["connected"] is True
    stop_cleanly(srv)
    rows = read_db(
        db_path(srv),
        "SELECT count(*), count(DISTINCT msg_id), min(value), max(value) FROM readings WHERE device_id = ?",
        [dev],
    )
    assert rows == [(total, total, 0.0, float(total - 1))]


def test_back_pressure_delays_acks_and_loses_nothing(
    mosquitto: Mosquitto, start: Callable[..., ServerProcess], dev: str
) -> None:
    # A queue of 2 readings: concurrent MQTT messages are refused (Overloaded) and must wait.
    limits = {"FLEETSTREAM_INGEST__QUEUE_MAX_RECORDS": "2", "FLEETSTREAM_INGEST__MAX_BATCH_ITEMS": "2"}
    srv = start("--mqtt", mosquitto.url, env=limits)
    pub = Publisher(mosquitto.port)
    total = 100
    for i in range(total):
        pub.publish(f"devices/{dev}/telemetry", reading(dev, i, float(i)))
    pub.wait_acked()
    pub.close()

    wait_for(lambda: count_of(srv, dev) == total, timeout=30)
    status = wait_for(lambda: (s := mqtt_status(srv))["messages_acked"] == total and s)
    assert status["retries"] > 0
    assert (status["messages_received"], status["dead_letters"]) == (total, 0)
    assert metrics(srv, dev, agg="count,sum")["temperature"] == {"count": total, "sum": sum(range(total))}
