"""One contract for every Bus adapter (memory://, kafka:// on Tansu): an adapter is done when it passes.

The memory bus keeps no log: a publish is acknowledged when the one consumer of
each group has committed it, and records not committed die with their
consumer (their publishers get an error and retry). Cases that need a log kept
for a later consumer are skipped for it, naming that design.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from fleetstream.adapters import BUSES, by_url
from fleetstream.adapters.bus.memory import MemoryBus
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.errors import BusUnavailable, Overloaded
from fleetstream.ports import Bus, BusBatch

from ..servers import Tansu, free_port

kafka = pytest.importorskip("confluent_kafka")

PARTITIONS = 4
NO_LOG = "memory:// keeps no log: records not committed die with their consumer (publishers get an error)"
ONE_CONSUMER = "memory:// has one consumer per group by design (the embedded engine)"
S = 1_000_000


@pytest.fixture(params=["memory", "kafka"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_bus(kind: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Bus]]:
    """Builds (unstarted) buses of the adapter under test; kafka ones on one Tansu per module."""
    if kind == "memory":
        yield lambda **kw: MemoryBus()
        return
    broker: Tansu = request.getfixturevalue("module_tansu")
    yield lambda **kw: by_url(BUSES, f"kafka://{broker.bootstrap}", "bus", partitions=PARTITIONS, **kw)


@pytest.fixture
def topic() -> str:
    return f"bus-{uuid.uuid4().hex[:12]}"


def partitions_of(kind: str) -> list[int]:
    return [0] if kind == "memory" else list(range(PARTITIONS))


def message(device: str, i: int, *, event: bool = False) -> DeviceMessage:
    if event:
        return DeviceMessage(device, i * S, "startup", "Sensor", [], f"s-{i}", i * S + 7)
    readings = [
        Reading(device, i * S, "temperature", 20.0 + i, "°C", "Thermostat", None),
        Reading(device, i * S, "humidity", 0.5 * i, None, "Thermostat", None),
    ]
    return DeviceMessage(device, i * S, "telemetry", "Thermostat", readings, None, i * S + 3)


def batch_of(devices: list[str], first: int, count: int) -> Batch:
    """``count`` messages per device, numbered from ``first``; every fifth one a reading-less event."""
    return Batch.from_messages(
        message(d, i, event=i % 5 == 4) for i in range(first, first + count) for d in devices
    )


def by_device(messages: list[DeviceMessage]) -> dict[str, list[DeviceMessage]]:
    out: dict[str, list[DeviceMessage]] = defaultdict(list)
    for m in messages:
        out[m.device_id].append(m)
    return dict(out)


def row_ids(batch: Batch) -> list[tuple[str, str, int]]:
    return list(zip(batch.device_id, batch.sensor, batch.ts, strict=True))


async def take(
    batches: AsyncIterator[BusBatch], records: int, *, commit: bool = True, timeout: float = 30
) -> list[BusBatch]:
    """Batches until ``records`` records were taken, each committed (or not) as it comes."""
    taken: list[BusBatch] = []
    count = 0

    async def run() -> None:
        nonlocal count
        async for b in batches:
            taken.append(b)
            count += b.batch.records
            if commit:
                await b.commit()
            if count >= records:
                return

    await asyncio.wait_for(run(), timeout)
    assert count == records
    return taken


async def nothing_more(batches: AsyncIterator[BusBatch], seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        extra = await asyncio.wait_for(anext(batches), seconds)
        pytest.fail(f"unexpected records: {row_ids(extra.batch)}")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_published_batches_come_back_equal(make_bus: Callable[..., Bus], topic: str) -> None:
    devices = ["dev-a", "dev-b", "dev:c@1"]
    published = [batch_of(devices, 0, 6), batch_of(devices[:1], 6, 3)]

    async def scenario() -> list[BusBatch]:
        bus = make_bus()
        await bus.start()
        async with contextlib.aclosing(bus.subscribe(topic, "g", 1000)) as batches:
            sending = [asyncio.create_task(bus.publish(topic, b)) for b in published]
            got = await take(batches, sum(b.records for b in published))
            await asyncio.gather(*sending)  # memory://: returns once committed
        await bus.close()
        return got

    got = run(scenario())
    sent_messages = [m for b in published for m in b.messages()]
    got_messages = [m for b in got for m in b.batch.messages()]
    assert by_device(got_messages) == by_device(sent_messages)
    assert sum(len(b.batch) for b in got) == 2 * (3 * 5 + 3)  # two readings a message, events aside
    assert sum(len(b.batch.events) for b in got) == 3  # i = 4 of each device


def test_each_devices_records_keep_their_order(make_bus: Callable[..., Bus], topic: str, kind: str) -> None:
    devices = [f"order-{d}" for d in range(12)]
    published = [batch_of(devices, 10 * k, 10) for k in range(4)]

    async def scenario() -> list[BusBatch]:
        bus = make_bus()
        await bus.start()
        async with contextlib.aclosing(bus.subscribe(topic, "g", 25)) as batches:
            sending = [asyncio.create_task(bus.publish(topic, b)) for b in published]
            got = await take(batches, sum(b.records for b in published))
            await asyncio.gather(*sending)
        await bus.close()
        return got

    got = run(scenario())
    # at most max_records, unless one published unit is larger: memory:// hands out whole published
    # batches (here 216 records each), kafka:// whole packs of one partition, each holding 18
    # records of every device there (CRC-32 of the ids mod 4 puts 2, 4, 2 and 4 devices on 0-3)
    sizes = {b.batch.records for b in got}
    assert sizes == ({216} if kind == "memory" else {2 * 18, 4 * 18})
    seen = by_device([m for b in got for m in b.batch.messages()])
    assert {d: [m.ts // S for m in ms] for d, ms in seen.items()} == {d: list(range(40)) for d in devices}


def test_hooks_tell_the_partitions_gained_and_lost(
    make_bus: Callable[..., Bus], topic: str, kind: str
) -> None:
    calls: list[tuple[str, list[int]]] = []

    async def revoked(partitions: list[int]) -> None:  # a hook may be async
        await asyncio.sleep(0)
        calls.append(("revoke", partitions))

    async def scenario() -> None:
        bus = make_bus()
        await bus.start()
        batches = bus.subscribe(
            topic, "g", 100, on_assign=lambda p: calls.append(("assign", p)), on_revoke=revoked
        )
        async with contextlib.aclosing(batches):
            sending = asyncio.create_task(bus.publish(topic, batch_of(["h"], 0, 2)))
            await take(batches, 4)
            await sending
        await bus.close()

    run(scenario())
    assert calls == [("assign", partitions_of(kind)), ("revoke", partitions_of(kind))]


def test_a_new_consumer_resumes_after_the_committed_records(
    make_bus: Callable[..., Bus], topic: str, kind: str
) -> None:
    if kind == "memory":
        pytest.skip(NO_LOG)
    devices = [f"resume-{d}" for d in range(8)]
    first, second = batch_of(devices, 0, 3), batch_of(devices, 3, 3)

    async def scenario() -> list[BusBatch]:
        bus = make_bus()
        await bus.start()
        await bus.publish(topic, first)
        async with contextlib.aclosing(bus.subscribe(topic, "g", 1000)) as batches:
            await take(batches, first.records)
        await bus.publish(topic, second)
        async with contextlib.aclosing(bus.subscribe(topic, "g", 1000)) as batches:
            got = await take(batches, second.records)
            await nothing_more(batches, 1.0)
        await bus.close()
        return got

    got = run(scenario())
    assert sorted(r for b in got for r in row_ids(b.batch)) == sorted(row_ids(second))


def test_records_not_committed_come_again(make_bus: Callable[..., Bus], topic: str, kind: str) -> None:
    if kind == "memory":
        pytest.skip(NO_LOG)
    published = batch_of([f"again-{d}" for d in range(6)], 0, 4)

    async def scenario() -> list[BusBatch]:
        bus = make_bus()
        await bus.start()
        await bus.publish(topic, published)
        async with contextlib.aclosing(bus.subscribe(topic, "g", 1000)) as batches:
            await take(batches, published.records, commit=False)
        async with contextlib.aclosing(bus.subscribe(topic, "g", 1000)) as batches:
            got = await take(batches, published.records)
        await bus.close()
        return got

    got = run(scenario())
    assert sorted(r for b in got for r in row_ids(b.batch)) == sorted(row_ids(published))


def test_a_failed_batch_is_not_committed_and_comes_again(
    make_bus: Callable[..., Bus], topic: str, kind: str
) -> None:
    if kind == "memory":
        pytest.skip(NO_LOG + "; fail() is handed to the publishers instead")
    published = batch_of([f"fail-{d}" for d in range(5)], 0, 3)
    expected = sorted(row_ids(published))

    async def scenario() -> tuple[list[BusBatch], list[BusBatch]]:
        bus = make_bus(fail_backoff_s=0.05)
        await bus.start()
        await bus.publish(topic, published)
        async with contextlib.aclosing(bus.subscribe(topic, "g", 1000)) as batches:
            failed = await take(batches, published.records, commit=False)
            for b in failed:
                await b.fail(RuntimeError("the store is down"))
            again = await take(batches, published.records, commit=False)  # rewound: the same member
        async with contextlib.aclosing(bus.subscribe(topic, "g", 1000)) as batches:
            after = await take(batches, published.records)  # still not committed: the next member
        await bus.close()
        return again, after

    again, after = run(scenario())
    assert sorted(r for b in again for r in row_ids(b.batch)) == expected
    assert sorted(r for b in after for r in row_ids(b.batch)) == expected


def test_two_consumers_of_a_group_split_the_partitions_and_see_each_record_once(
    make_bus: Callable[..., Bus], topic: str, kind: str
) -> None:
    if kind == "memory":
        pytest.skip(ONE_CONSUMER)
    published = batch_of([f"split-{d}" for d in range(40)], 0, 3)
    owned: dict[str, set[int]] = {"one": set(), "two": set()}

    def hooks(name: str) -> dict[str, Any]:
        return {
            "on_assign": lambda p: owned[name].update(p),
            "on_revoke": lambda p: owned[name].difference_update(p),
        }

    async def consume(bus: Bus, name: str, out: list[BusBatch]) -> None:
        async with contextlib.aclosing(bus.subscribe(topic, "g", 50, **hooks(name))) as batches:
            async for b in batches:  # until the bus closes
                out.append(b)
                await b.commit()

    async def scenario() -> dict[str, list[BusBatch]]:
        bus = make_bus()
        await bus.start()
        await bus.publish(topic, batch_of(["warm-up"], 0, 1))  # creates the topic
        got: dict[str, list[BusBatch]] = {"one": [], "two": []}
        tasks = [asyncio.create_task(consume(bus, n, got[n])) for n in got]
        deadline = time.monotonic() + 30
        while not (owned["one"] and owned["two"] and owned["one"] | owned["two"] == set(range(PARTITIONS))):
            assert time.monotonic() < deadline, owned
            await asyncio.sleep(0.1)
        assert not owned["one"] & owned["two"]
        await bus.publish(topic, published)
        while sum(b.batch.records for bs in got.values() for b in bs) < published.records + 2:
            assert time.monotonic() < deadline + 30
            await asyncio.sleep(0.1)
        await bus.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return got

    got = run(scenario())
    ids = {n: [r for b in bs for r in row_ids(b.batch) if r[0].startswith("split-")] for n, bs in got.items()}
    assert ids["one"]
    assert ids["two"]
    assert sorted(ids["one"] + ids["two"]) == sorted(row_ids(published))


def test_publishing_to_an_unreachable_broker_raises_within_the_bound() -> None:
    bus = by_url(BUSES, f"kafka://127.0.0.1:{free_port()}", "bus", delivery_timeout_s=2.0)

    async def scenario() -> float:
        await bus.start()
        started = time.monotonic()
        with pytest.raises(BusUnavailable, match=r"Kafka broker 127\.0\.0\.1:\d+ unavailable"):
            await bus.publish("readings", batch_of(["x"], 0, 1))
        waited = time.monotonic() - started
        await bus.close()
        return waited

    assert 1.5 < run(scenario()) < 4.0


def test_a_full_producer_queue_raises_overloaded(module_tansu: Tansu, topic: str) -> None:
    url = f"kafka://{module_tansu.bootstrap}"
    bus = by_url(BUSES, url, "bus", partitions=8, config={"queue.buffering.max.messages": 3})

    async def scenario() -> None:
        await bus.start()
        # one message per partition: these 10 devices' ids hash onto all 8 partitions (CRC-32 mod 8)
        with pytest.raises(Overloaded, match="queue is full"):
            await bus.publish(topic, batch_of([f"full-{d}" for d in range(10)], 0, 1))
        await bus.close()

    run(scenario())
