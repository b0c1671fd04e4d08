"""MQTT broker URLs and topic filters: what ``--mqtt`` and ``--mqtt-topic`` accept and refuse."""

from __future__ import annotations

import doctest

import pytest

import fleetstream.ingest.mqtt
from fleetstream.config import load_settings
from fleetstream.errors import ConfigError
from fleetstream.ingest.mqtt import MqttEndpoint, TopicFilter, parse_mqtt_url


def test_doctests() -> None:
    failed, attempted = doctest.testmod(fleetstream.ingest.mqtt)
    assert (failed, attempted > 0) == (0, True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1", MqttEndpoint("127.0.0.1", 1883)),
        ("mqtt://127.0.0.1:18830/", MqttEndpoint("127.0.0.1", 18830)),
        ("mqtt://[::1]:1884", MqttEndpoint("::1", 1884)),
        ("mqtt://gw:p%40ss@broker:1883", MqttEndpoint("broker", 1883, "gw", "p@ss")),
        ("mqtt://gw@broker?client_id=gw-2", MqttEndpoint("broker", 1883, "gw", None, "gw-2")),
        (" mqtt://broker:1 ", MqttEndpoint("broker", 1)),
    ],
)
def test_urls_accepted(url: str, expected: MqttEndpoint) -> None:
    assert parse_mqtt_url(url) == expected


def test_display_hides_the_password() -> None:
    assert parse_mqtt_url("mqtt://gw:secret@[::1]:1884").display == "mqtt://gw@[::1]:1884"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:1883", "expected mqtt://[user[:password]@]host[:port][?client_id=ID]"),
        ("http://127.0.0.1:1883", "expected mqtt://"),
        ("mqtt://", "expected mqtt://"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:99999", "the port must be a number from 1 to 65535"),
        ("mqtt://broker:abc", "the port must be a number from 1 to 65535"),
        ("mqtts://broker:8883", "only plain mqtt:// is supported for now"),
        ("mqtt://broker/devices/+/telemetry", "give the topic filter with --mqtt-topic"),
        ("mqtt://broker?qos=2", "unknown parameter(s) qos; known: client_id"),
        ("mqtt://broker?client_id=", "client_id is empty"),
    ],
)
def test_urls_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid MQTT URL") as info:
        parse_mqtt_url(url)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("text", "group", "inner", "topic", "device"),
    [
        ("devices/+/telemetry", None, "devices/+/telemetry", "devices/t-1/telemetry", "t-1"),
        (
            "$share/fleetstream/devices/+/telemetry",
            "fleetstream",
            "devices/+/telemetry",
            "devices/a/telemetry",
            "a",
        ),
        ("site/+/+/data", None, "site/+/+/data", "site/north/d-7/data", "north"),
        ("+", None, "+", "d-1", "d-1"),
        ("devices/#", None, "devices/#", "devices/x/y", None),
        ("telemetry", None, "telemetry", "telemetry", None),
    ],
)
def test_filters_and_the_device_level(
    text: str, group: str | None, inner: str, topic: str, device: str | None
) -> None:
    f = TopicFilter.parse(text)
    assert (f.subscription, f.group, f.filter) == (text, group, inner)
    assert f.device_of(topic) == device


def test_a_topic_shorter_than_the_device_level_has_no_device() -> None:
    assert TopicFilter.parse("a/b/+").device_of("a/b") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "it is empty"),
        ("devices/#/telemetry", "'#' must be a whole level and the last one"),
        ("devices/x#", "'#' must be a whole level and the last one"),
        ("devices/dev+/telemetry", "'+' must be a whole level"),
        ("$share//devices/+", "expected $share/<group>/<filter>"),
        ("$share/g+/devices/+", "expected $share/<group>/<filter>"),
        ("$share/g/", "it is empty"),
        ("a\0b", "NUL"),
    ],
)
def test_filters_refused_with_the_rule(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid MQTT topic filter") as info:
        TopicFilter.parse(text)
    assert message in info.value.message


def test_settings_read_mqtt_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSTREAM_MQTT", "mqtt://127.0.0.1:1884")
    monkeypatch.setenv("FLEETSTREAM_MQTT_TOPIC", "$share/g/devices/+/telemetry")
    s = load_settings()
    assert (s.mqtt, s.mqtt_topic) == ("mqtt://127.0.0.1:1884", "$share/g/devices/+/telemetry")
    assert load_settings(mqtt="mqtt://other").mqtt == "mqtt://other"


def test_settings_default_to_no_mqtt_and_the_devices_topic() -> None:
    s = load_settings()
    assert (s.mqtt, s.mqtt_topic) == (None, "devices/+/telemetry")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mqtt": "tcp://broker"}, "invalid MQTT URL 'tcp://broker'"),
        ({"mqtt": "mqtt://broker", "mqtt_topic": "a/#/b"}, "invalid MQTT topic filter 'a/#/b'"),
    ],
)
def test_settings_refuse_a_bad_url_or_filter(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    assert info.value.message.startswith(message)
