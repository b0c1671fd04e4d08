"""The simulator's broker targets: URL parsing, the Flask simulator's environment aliases, grouping."""

from __future__ import annotations

import zlib

import pytest

from fleetstream.domain.records import is_valid_device_id
from fleetstream.errors import ConfigError
from fleetstream.simulator.brokers import (
    PACK_BUCKETS,
    KafkaTransport,
    bucket_of,
    by_device,
    packed,
    parse_kafka_target,
    parse_mqtt_target,
    target_from_env,
)


def test_an_mqtt_target_has_defaults_and_a_topic_prefix() -> None:
    t = parse_mqtt_target("mqtt://127.0.0.1")
    assert (t.host, t.port, t.prefix, t.keepalive_s) == ("127.0.0.1", 1883, "devices", 60)
    assert t.topic("th-1") == "devices/th-1/telemetry"
    t = parse_mqtt_target("mqtt://u:p@broker:1884/plant/a/?keepalive=15&client_id=sim-1")
    assert (t.username, t.password, t.prefix, t.keepalive_s, t.client_id) == (
        "u",
        "p",
        "plant/a",
        15,
        "sim-1",
    )
    for bad, why in (
        ("mqtts://broker", "expected"),
        ("mqtt://broker:0x", "port"),
        ("mqtt://broker/a/#", "prefix"),
        ("mqtt://broker?qos=2", "unknown parameter"),
        ("mqtt://broker?keepalive=0", "keepalive"),
    ):
        with pytest.raises(ConfigError, match=why):
            parse_mqtt_target(bad)


def test_the_flask_simulators_variables_make_an_mqtt_target() -> None:
    assert target_from_env({}) is None
    assert target_from_env({"TOPIC_NAME": "events"}) is None  # Kafka: name the topic in the URL
    assert target_from_env({"MQTT_HOST": "b"}) == "mqtt://b:1883"
    env = {"MQTT_HOST": "b", "MQTT_PORT": "1884", "MQTT_TOPIC": "/iot/", "MQTT_KEEP_ALIVE_INTERVAL": "30"}
    url = target_from_env(env)
    assert url == "mqtt://b:1884/iot?keepalive=30"
    t = parse_mqtt_target(url)
    assert (t.port, t.prefix, t.keepalive_s) == (1884, "iot", 30)


def test_a_batch_is_grouped_by_device_in_order() -> None:
    batch = [{"device_id": "a", "seq": 0}, {"device_id": "b", "seq": 0}, {"device_id": "a", "seq": 1}]
    assert by_device(batch) == {"a": [batch[0], batch[2]], "b": [batch[1]]}


def test_pack_asks_for_messages_of_several_devices_on_a_topic_without_a_device_level() -> None:
    assert parse_mqtt_target("mqtt://b").pack == 0
    t = parse_mqtt_target("mqtt://b:1884/plant?pack=200&keepalive=5")
    assert (t.pack, t.keepalive_s, t.pack_topic) == (200, 5, "plant/telemetry")
    endpoint, pack = parse_kafka_target("kafka://k:9093/events?pack=50&group=g")
    assert (endpoint.bootstrap, endpoint.topic, endpoint.group, pack) == ("k:9093", "events", "g", 50)
    assert parse_kafka_target("kafka://k/events")[1] == 0
    for bad in ("mqtt://b?pack=many", "mqtt://b?pack=-2", "kafka://k?pack=1.5"):
        with pytest.raises(ConfigError, match="pack must be a whole number"):
            parse_kafka_target(bad) if bad.startswith("kafka") else parse_mqtt_target(bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        parse_kafka_target("kafka://k/events?pack=5&acks=1")


def test_packs_cut_a_batch_in_order_and_kafka_packs_keep_each_device_under_one_key() -> None:
    batch = [{"device_id": f"d-{i % 40}", "seq": i} for i in range(400)]
    parts = packed(batch, 64)
    assert [len(p) for p in parts] == [64] * 6 + [16]
    assert [m for p in parts for m in p] == batch

    assert bucket_of("d-7") == zlib.crc32(b"d-7") % PACK_BUCKETS
    transport = KafkaTransport("kafka://k/events?pack=8")
    keyed = transport._keyed(batch)
    keys: dict[str, set[str]] = {}
    for key, part in keyed:
        assert 1 <= len(part) <= 8
        assert not is_valid_device_id(key)  # so the server takes the ids from the payload
        for m in part:
            keys.setdefault(m["device_id"], set()).add(key)
    assert all(len(k) == 1 for k in keys.values())
    assert len(keys) == 40
    for device in keys:  # each device's readings in the order generated
        seqs = [m["seq"] for _, part in keyed for m in part if m["device_id"] == device]
        assert seqs == sorted(seqs)
    assert sum(len(p) for _, p in keyed) == 400
    assert KafkaTransport("kafka://k/events")._keyed(batch[:3]) == [
        ("d-0", [batch[0]]),
        ("d-1", [batch[1]]),
        ("d-2", [batch[2]]),
    ]


def test_simulate_help_renders() -> None:
    from typer.testing import CliRunner

    from fleetstream.cli import app

    result = CliRunner().invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0, result.output
    assert "mqtt://host:port/prefix" in result.output
