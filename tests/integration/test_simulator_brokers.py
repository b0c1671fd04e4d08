"""The simulator over real brokers: ``simulate --target mqtt://...`` into mosquitto and
``--target kafka://...`` into Tansu, each read by a real ``fleetstream up --mqtt``/``--kafka-source``.
The server then lists exactly the simulated devices and stores exactly the acknowledged readings."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from fleetstream.domain.clock import SystemClock
from fleetstream.simulator import Simulator
from fleetstream.simulator.brokers import KafkaTransport, MqttTransport
from fleetstream.simulator.cli import simulate
from fleetstream.simulator.fleet import Fleet, parse_kinds

from ..servers import Mosquitto, Tansu
from ._support import ServerProcess, query, wait_for

pytestmark = pytest.mark.integration

DEVICES, RATE, SEED, KINDS = 12, 5.0, 21, "thermostat,barometer"  # one reading per message


def expected_ids() -> set[str]:
    return {d.device_id for d in Fleet(DEVICES, RATE, SEED, parse_kinds(KINDS)).devices}


def run(target: str | None, capsys: pytest.CaptureFixture[str], **extra: Any) -> int:
    """Simulate for 3 s against ``target``; the acknowledged messages, from the summary line."""
    code = simulate(DEVICES, RATE, target, 3.0, SEED, 50, kinds=KINDS, **extra)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    summary = out.strip().splitlines()[-1]
    assert "errors 0" in summary, summary
    found = re.search(r"acknowledged ([\d,]+)", summary)
    assert found, summary
    return int(found.group(1).replace(",", ""))


def stored(srv: ServerProcess) -> tuple[set[str], int]:
    status, body = srv.call("GET", query("/api/v1/devices", limit=1000))
    assert status == 200, body
    devices = body["devices"]
    return {d["device_id"] for d in devices}, sum(d["readings"] for d in devices)


def assert_same_fleet(srv: ServerProcess, acknowledged: int) -> None:
    assert acknowledged > DEVICES * RATE  # at least a second's worth arrived

    def complete() -> tuple[set[str], int] | None:
        ids, readings = stored(srv)
        return (ids, readings) if readings >= acknowledged else None

    wait_for(complete, timeout=10, interval=0.2)
    ids, readings = stored(srv)
    assert ids == expected_ids()
    assert readings == acknowledged  # re-published messages are dropped by msg_id


def test_the_fleet_over_mqtt_is_the_fleet_the_server_lists(
    mosquitto: Mosquitto, start: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    srv = start("--mqtt", mosquitto.url)
    acknowledged = run(mosquitto.url, capsys)
    assert_same_fleet(srv, acknowledged)


def test_the_flask_simulators_mqtt_variables_choose_the_target(
    mosquitto: Mosquitto,
    start: Callable[..., ServerProcess],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = start("--mqtt", mosquitto.url, "--mqtt-topic", "plant/+/telemetry")
    monkeypatch.setenv("MQTT_HOST", "127.0.0.1")
    monkeypatch.setenv("MQTT_PORT", str(mosquitto.port))
    monkeypatch.setenv("MQTT_TOPIC", "plant")
    monkeypatch.setenv("MQTT_KEEP_ALIVE_INTERVAL", "20")
    acknowledged = run(None, capsys)
    assert_same_fleet(srv, acknowledged)


def test_the_fleet_over_kafka_is_the_fleet_the_server_lists(
    module_tansu: Tansu, start: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    admin_mod = pytest.importorskip("confluent_kafka.admin")
    admin = admin_mod.AdminClient({"bootstrap.servers": module_tansu.bootstrap})
    futures = admin.create_topics(
        [admin_mod.NewTopic("device-events", num_partitions=2, replication_factor=1)]
    )
    for future in futures.values():
        future.result(15)
    srv = start("--kafka-source", module_tansu.url("device-events"))
    acknowledged = run(f"kafka://{module_tansu.bootstrap}", capsys)  # the topic's default name
    assert_same_fleet(srv, acknowledged)


def test_packed_mqtt_messages_of_several_devices_are_the_fleet_the_server_lists(
    mosquitto: Mosquitto, start: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    srv = start("--mqtt", mosquitto.url, "--mqtt-topic", "devices/telemetry")
    acknowledged = run(f"{mosquitto.url}?pack=7", capsys)
    assert_same_fleet(srv, acknowledged)
    status, body = srv.call("GET", "/api/v1/dead-letters")
    assert (status, body["dead_letters"]) == (200, [])


def test_packed_kafka_messages_are_the_fleet_the_server_lists(
    module_tansu: Tansu, start: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    admin_mod = pytest.importorskip("confluent_kafka.admin")
    admin = admin_mod.AdminClient({"bootstrap.servers": module_tansu.bootstrap})
    futures = admin.create_topics(
        [admin_mod.NewTopic("packed-events", num_partitions=2, replication_factor=1)]
    )
    for future in futures.values():
        future.result(15)
    srv = start("--kafka-source", module_tansu.url("packed-events"))
    acknowledged = run(f"kafka://{module_tansu.bootstrap}/packed-events?pack=7", capsys)
    assert_same_fleet(srv, acknowledged)


def test_several_readings_travel_in_one_mqtt_message_and_a_dead_broker_counts_as_errors(
    mosquitto: Mosquitto,
) -> None:
    transport = MqttTransport(mosquitto.url)
    # half-second ticks at 10 messages/s: about five readings of each device per batch
    sim = Simulator(10, 10.0, 3, SystemClock(), transport, kinds={"thermostat": 1}, tick_s=0.5)
    asyncio.run(sim.run(1.0))
    assert (sim.errors, sim.dropped) == (0, 0)
    assert sim.acknowledged == sim.generated > 0
    assert 0 < transport.published * 3 < sim.acknowledged  # one message per device and batch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    dead = MqttTransport(f"mqtt://127.0.0.1:{closed}", timeout_s=0.3, max_retries=1, backoff_s=0.05)
    sim = Simulator(5, 5.0, 3, SystemClock(), dead, kinds={"thermostat": 1})
    asyncio.run(sim.run(1.0))
    assert sim.acknowledged == 0
    assert sim.errors + sim.dropped == sim.generated > 0


def test_a_kafka_batch_is_keyed_by_device(module_tansu: Tansu) -> None:
    kafka = pytest.importorskip("confluent_kafka")
    topic = "keyed-sim"
    transport = KafkaTransport(f"kafka://{module_tansu.bootstrap}/{topic}")
    sim = Simulator(4, 5.0, 8, SystemClock(), transport, kinds={"barometer": 1}, batch_size=100)
    asyncio.run(sim.run(1.0))
    assert sim.acknowledged == sim.generated > 0
    consumer = kafka.Consumer(
        {"bootstrap.servers": module_tansu.bootstrap, "group.id": "t", "auto.offset.reset": "earliest"}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions])
    readings = 0
    try:
        while readings < sim.acknowledged:
            msg = consumer.poll(5)
            assert msg is not None, f"only {readings} of {sim.acknowledged} readings came back"
            assert msg.error() is None, msg.error()
            items = json.loads(msg.value())
            assert {item["device_id"] for item in items} == {msg.key().decode()}
            readings += len(items)
    finally:
        consumer.close()
    assert readings == sim.acknowledged


def test_the_mqtt_transport_comes_back_after_a_broker_restart(mosquitto: Mosquitto) -> None:
    transport = MqttTransport(mosquitto.url, timeout_s=1.0, backoff_s=0.1)
    sim = Simulator(5, 5.0, 2, SystemClock(), transport, kinds={"thermostat": 1})
    before: list[int] = []

    async def main() -> None:
        async def restart() -> None:
            await asyncio.sleep(1.0)
            before.append(sim.acknowledged)
            await asyncio.to_thread(mosquitto.restart, 0.5)

        await asyncio.gather(sim.run(4.5), restart())

    asyncio.run(main())
    assert before[0] > 0
    assert sim.acknowledged > before[0] + 25  # more than a second's worth after the restart
    assert sim.acknowledged + sim.errors + sim.dropped == sim.generated
