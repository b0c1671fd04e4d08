"""The Kafka bus's group timeouts: librdkafka settings, the fallback ladder, the settings and the
``fleetstream worker`` flags that set them, and the proxy the integration tests refuse them with."""

from __future__ import annotations

import struct

import pytest
from typer.testing import CliRunner

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.bus.kafka_group import (
    KAFKA_MIN_SESSION_TIMEOUT_MS,
    GroupTimeouts,
    fallback_session_timeout,
    group_config,
)
from fleetstream.cli import app
from fleetstream.cluster.adapters import kafka_bus
from fleetstream.config import load_settings
from fleetstream.errors import ConfigError

from ..integration._kafka_proxy import INVALID_SESSION_TIMEOUT, join_session_timeout, refusal


def test_the_defaults_are_3000_ms_sessions_and_500_ms_heartbeats_with_range_assignment() -> None:
    config = group_config("workers", GroupTimeouts())
    assert config["group.id"] == "workers"
    assert config["session.timeout.ms"] == 3000
    assert config["heartbeat.interval.ms"] == 500
    assert config["partition.assignment.strategy"] == "range"
    assert config["enable.auto.commit"] is False
    assert "group.instance.id" not in config  # no static membership


def test_without_timeouts_a_consumer_gets_what_every_broker_accepts() -> None:
    # the api's live relay: a group of its own, no fallback, so never refused
    config = group_config("fleetstream-api-1")
    assert (config["session.timeout.ms"], config["heartbeat.interval.ms"]) == (6000, 1000)
    assert config["partition.assignment.strategy"] == "range"


def test_given_timeouts_reach_librdkafka() -> None:
    config = group_config("g", GroupTimeouts(session_timeout_ms=8000, heartbeat_interval_ms=2000))
    assert (config["session.timeout.ms"], config["heartbeat.interval.ms"]) == (8000, 2000)


@pytest.mark.parametrize(
    ("refused", "next_ms"), [(1000, 6000), (3000, 6000), (5999, 6000), (6000, 45_000), (44_999, 45_000)]
)
def test_a_refused_session_timeout_falls_back_to_the_next_longer_one(refused: int, next_ms: int) -> None:
    assert fallback_session_timeout(refused) == next_ms


def test_nothing_is_left_after_45_s() -> None:
    assert fallback_session_timeout(45_000) is None
    assert fallback_session_timeout(60_000) is None
    assert KAFKA_MIN_SESSION_TIMEOUT_MS == 6000


@pytest.mark.parametrize(("session", "heartbeat"), [(3000, 3000), (3000, 4000), (0, 500), (3000, 0)])
def test_timeouts_that_cannot_work_are_refused(session: int, heartbeat: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        GroupTimeouts(session, heartbeat)


def test_the_bus_uses_its_group_timeouts_for_every_subscription() -> None:
    bus = KafkaBus("kafka://127.0.0.1:1", group=GroupTimeouts(4000, 800))
    assert bus.group == GroupTimeouts(4000, 800)
    assert KafkaBus("kafka://127.0.0.1:1").group == GroupTimeouts(3000, 500)


# --- settings, environment and CLI ----------------------------------------------------------


def test_settings_default_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    group = load_settings(bus="kafka://127.0.0.1:1").kafka_group
    assert (group.session_timeout_ms, group.heartbeat_interval_ms) == (3000, 500)
    monkeypatch.setenv("FLEETSTREAM_KAFKA_GROUP__SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("FLEETSTREAM_KAFKA_GROUP__HEARTBEAT_INTERVAL_MS", "1000")
    settings = load_settings(bus="kafka://127.0.0.1:1")
    assert kafka_bus(settings).group == GroupTimeouts(6000, 1000)


def test_a_heartbeat_not_below_the_session_timeout_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(kafka_group={"session_timeout_ms": 3000, "heartbeat_interval_ms": 3000})
    assert info.value.message == (
        "kafka_group.heartbeat_interval_ms (3000) must be below kafka_group.session_timeout_ms (3000)"
    )


def test_a_session_timeout_below_a_second_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"kafka_group\.session_timeout_ms: Input should be greater"):
        load_settings(kafka_group={"session_timeout_ms": 500, "heartbeat_interval_ms": 100})


def test_worker_flags_are_checked_before_anything_starts() -> None:
    result = CliRunner().invoke(
        app,
        [
            "worker",
            "--bus",
            "kafka://127.0.0.1:1",
            "--store",
            "postgresql://u@127.0.0.1:1/db",
            "--session-timeout-ms",
            "2000",
            "--heartbeat-interval-ms",
            "2500",
        ],
    )
    assert result.exit_code == 2
    assert "kafka_group.heartbeat_interval_ms (2500) must be below kafka_group.session_timeout_ms (2000)" in (
        result.output
    )


# --- the refusing proxy of the integration tests ---------------------------------------------


def _join_request(version: int, session_timeout: int) -> bytes:
    client, group = b"rdkafka", b"workers"
    header = struct.pack(">hhih", 11, version, 42, len(client)) + client
    return header + struct.pack(">h", len(group)) + group + struct.pack(">ii", session_timeout, 300_000)


def test_the_proxy_reads_a_join_requests_session_timeout() -> None:
    assert join_session_timeout(_join_request(5, 3000)) == (42, 5, 3000)
    assert join_session_timeout(struct.pack(">hhih", 12, 4, 1, 0)) is None  # a heartbeat


def test_the_proxys_refusal_is_a_join_group_response_with_error_26() -> None:
    frame = refusal(42, 5)
    correlation, throttle, error, generation = struct.unpack_from(">iihi", frame, 0)
    assert (correlation, throttle, error, generation) == (42, 0, INVALID_SESSION_TIMEOUT, -1)
    assert frame[14:] == b"\x00\x00" * 3 + b"\x00\x00\x00\x00"  # empty names, no members


@pytest.mark.parametrize("command", ["worker", "gateway", "api"])
def test_cluster_commands_print_their_help(command: str) -> None:
    # the bus option's help once held [/topic], which rich took for markup and crashed on
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "kafka://host:port (optionally /topic and ?partitions=N)" in result.output
    if command == "worker":
        assert "FLEETSTREAM_KAFKA_GROUP__SESSION_TIMEOUT_MS" in result.output
        assert "--heartbeat-interval-ms" in result.output
