"""The ``--kafka-source`` URL: defaults, and a clear error for each bad form."""

from __future__ import annotations

import pytest

from fleetstream.config import load_settings
from fleetstream.errors import ConfigError
from fleetstream.ingest.kafka import KafkaEndpoint, parse_kafka_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("kafka://127.0.0.1:9092/device-events", KafkaEndpoint("127.0.0.1", 9092, "device-events")),
        ("kafka://broker", KafkaEndpoint("broker", 9092, "device-events")),
        ("kafka://broker:19092/", KafkaEndpoint("broker", 19092, "device-events")),
        ("kafka://b:1/raw.v2?group=gw-a", KafkaEndpoint("b", 1, "raw.v2", "gw-a")),
    ],
)
def test_urls_and_their_defaults(url: str, expected: KafkaEndpoint) -> None:
    assert parse_kafka_url(url) == expected


def test_bootstrap_and_display() -> None:
    endpoint = parse_kafka_url("kafka://[::1]:9093")
    assert (endpoint.bootstrap, endpoint.display) == ("[::1]:9093", "kafka://[::1]:9093/device-events")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://b:9092/t",
            "invalid Kafka URL 'http://b:9092/t': expected kafka://host[:port][/topic][?group=NAME]",
        ),
        (
            "kafka://b:99999/t",
            "invalid Kafka URL 'kafka://b:99999/t': the port must be a number from 1 to 65535",
        ),
        (
            "kafka://b/a/b",
            "invalid Kafka URL 'kafka://b/a/b': the topic must be 1-249 characters of A-Z a-z 0-9 . _ -",
        ),
        ("kafka://b/t?x=1", "invalid Kafka URL 'kafka://b/t?x=1': unknown parameter(s) x; known: group"),
        (
            "kafka://b/t?group=",
            "invalid Kafka URL 'kafka://b/t?group=': the group must be 1-249 characters of A-Z a-z 0-9 . _ -",
        ),
        (
            "kafka://u:p@b/t",
            "invalid Kafka URL 'kafka://u:p@b/t': authentication is not supported yet (plain TCP only)",
        ),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_kafka_url(url)
    assert caught.value.message == message


def test_settings_refuse_a_bad_source_url() -> None:
    with pytest.raises(ConfigError, match="invalid Kafka URL 'kafka://'"):
        load_settings(kafka_source="kafka://")
    assert load_settings(kafka_source="kafka://b:1").kafka_source == "kafka://b:1"
