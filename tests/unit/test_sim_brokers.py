"""The simulator's broker targets: URL parsing, the Flask simulator's environment aliases, grouping."""

from __future__ import annotations

import pytest

from fleetstream.errors import ConfigError
from fleetstream.simulator.brokers import by_device, parse_mqtt_target, target_from_env


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


def test_simulate_help_renders() -> None:
    from typer.testing import CliRunner

    from fleetstream.cli import app

    result = CliRunner().invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0, result.output
    assert "mqtt://host:port/prefix" in result.output
