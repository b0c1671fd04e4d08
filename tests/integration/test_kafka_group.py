"""The Kafka bus's group timeouts on a broker that refuses short session timeouts, as Apache Kafka
and Redpanda do below ``group.min.session.timeout.ms`` (6000 ms by default).

Tansu accepts any session timeout, so a proxy in front of it (:mod:`._kafka_proxy`) answers
JoinGroup requests below 6000 ms with ``INVALID_SESSION_TIMEOUT``, as those brokers do; Tansu
advertises the proxy's address, so every connection of the client goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.bus.kafka_group import GroupTimeouts
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading

from ..servers import free_port, stop_process, tansu_binary, wait_for_port
from ._kafka_proxy import RefusingProxy

pytestmark = pytest.mark.integration

pytest.importorskip("confluent_kafka")


@pytest.fixture
def refusing_broker(tmp_path: Path) -> Iterator[RefusingProxy]:
    """Tansu behind a proxy refusing session timeouts below 6000 ms; connect to the proxy's port."""
    port = free_port()
    proxy = RefusingProxy(port).start()
    log = tmp_path / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{proxy.port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, proc, "tansu", log)
        yield proxy
    finally:
        proxy.close()
        stop_process(proc)


def readings(count: int) -> Batch:
    return Batch.from_messages(
        DeviceMessage(f"g-{i % 4}", i, "telemetry", "Sensor", [Reading(f"g-{i % 4}", i, "t", float(i))])
        for i in range(count)
    )


async def consume_all(bus: KafkaBus, topic: str, expected: int) -> int:
    """Records consumed (and committed) in a new group until ``expected`` came."""
    seen = 0
    batches_of = bus.subscribe(topic, f"g-{uuid.uuid4().hex[:6]}", 100)
    async with contextlib.aclosing(batches_of) as batches:  # type: ignore[type-var]  # an async generator
        async for taken in batches:
            seen += taken.record_count
            await taken.commit()
            if seen >= expected:
                break
    return seen


def test_a_refused_session_timeout_falls_back_to_6000_ms_and_the_member_consumes(
    refusing_broker: RefusingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = refusing_broker
    topic = f"refuse-{uuid.uuid4().hex[:8]}"

    async def scenario() -> int:
        bus = KafkaBus(f"kafka://127.0.0.1:{proxy.port}", partitions=2)
        await bus.start()
        try:
            await bus.publish(topic, readings(40))
            return await asyncio.wait_for(consume_all(bus, topic, 40), 60)
        finally:
            await bus.close()

    with caplog.at_level(logging.WARNING, logger="fleetstream.adapters.bus.kafka_subscription"):
        assert asyncio.run(scenario()) == 40
    assert GroupTimeouts().session_timeout_ms == 3000  # the default, which the broker refuses
    assert set(proxy.refused) == {3000}  # (one or more attempts before the fallback)
    assert set(proxy.accepted) == {6000}
    warnings = [r.getMessage() for r in caplog.records if "refused session.timeout.ms=3000" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "with 6000 ms instead" in warnings[0]


def test_a_session_timeout_the_broker_accepts_is_kept(refusing_broker: RefusingProxy) -> None:
    proxy = refusing_broker
    topic = f"accept-{uuid.uuid4().hex[:8]}"

    async def scenario() -> int:
        bus = KafkaBus(f"kafka://127.0.0.1:{proxy.port}", partitions=2, group=GroupTimeouts(7000, 1000))
        await bus.start()
        try:
            await bus.publish(topic, readings(10))
            return await asyncio.wait_for(consume_all(bus, topic, 10), 60)
        finally:
            await bus.close()

    assert asyncio.run(scenario()) == 10
    assert proxy.refused == []
    assert set(proxy.accepted) == {7000}
