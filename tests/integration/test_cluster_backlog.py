"""A worker taking a backlog, and a worker that lost its partition: every reading stored exactly once.

A backlog spans more event time than the dedup memory: keys newer than anything their partition
stored are known new without asking PostgreSQL, older ones (re-sends) are still looked up and
dropped, before and after a restart. A worker whose partition was taken over cannot store it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.cluster.partitions import CheckpointMoved, PartitionCheckpoint, PartitionStore
from fleetstream.cluster.worker import Worker
from fleetstream.config import load_settings
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ports import Derived

from ..servers import Tansu

pytestmark = [pytest.mark.integration, pytest.mark.slow]
psycopg = pytest.importorskip("psycopg")

T0 = 1_717_200_000_000_000
S = 1_000_000
DEVICES = 8
SECONDS = 300
RESENT_AFTER = 100  # a re-send comes this many seconds of event time after its original (horizon: 35 s)


def second(s: int, *, seq: int = 0) -> list[DeviceMessage]:
    return [
        DeviceMessage(
            f"b-{d}",
            T0 + s * S,
            "telemetry",
            "Sensor",
            [Reading(f"b-{d}", T0 + s * S, "t", float(s))],
            seq=seq,
        )
        for d in range(DEVICES)
    ]


def backlog() -> list[Batch]:
    """A reading per device and second, each second with the readings of RESENT_AFTER s before again."""
    return [
        Batch.from_messages(second(s) + (second(s - RESENT_AFTER) if s >= RESENT_AFTER else []))
        for s in range(SECONDS)
    ]


async def until(check: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def stored(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as con:
        row = con.execute("SELECT count(*), count(DISTINCT (device_id, sensor, ts)) FROM readings").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_backlog_and_its_old_resends_are_stored_once_before_and_after_a_restart(
    module_tansu: Tansu, postgres_url: str
) -> None:
    bus_url = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=4"
    # small batches: each partition's far behind the others' (the dedup memory is the worker's)
    settings = load_settings(bus=bus_url, store=postgres_url, table=False, engine={"batch_max_records": 100})

    async def publish(batches: list[Batch]) -> None:
        producer = KafkaBus(bus_url)
        await producer.start()
        for batch in batches:
            await producer.publish("readings", batch)
        await producer.close()

    async def take(expected: int) -> Worker:
        worker = Worker(settings, worker_id=uuid.uuid4().hex[:6])
        await worker.start()
        await until(lambda: stored(postgres_url)[0] >= expected, 90)
        await asyncio.sleep(1.0)  # anything more would be a duplicate
        await worker.stop()
        return worker

    async def run() -> None:
        await publish(backlog())
        first = await take(DEVICES * SECONDS)
        assert stored(postgres_url) == (DEVICES * SECONDS, DEVICES * SECONDS)
        assert first.lookups_spared_total > 0  # the backlog's own keys were not looked up ...
        assert first.dedup.duplicates_total >= DEVICES * (
            SECONDS - RESENT_AFTER
        )  # ... its re-sends were dropped
        with psycopg.connect(postgres_url) as con:
            bounds = con.execute(
                "SELECT max(stored_until), min(stored_until), min(partitions) FROM partition_checkpoints"
            ).fetchone()
        assert bounds == (T0 + (SECONDS - 1) * S, T0 + (SECONDS - 1) * S, 4)

        # after a restart: old re-sends (at or below the partitions' bounds) are looked up and dropped
        await publish([Batch.from_messages(second(s) + second(s + SECONDS)) for s in range(10)])
        second_worker = await take(DEVICES * (SECONDS + 10))
        assert stored(postgres_url) == (DEVICES * (SECONDS + 10), DEVICES * (SECONDS + 10))
        assert second_worker.readings_total == DEVICES * 10

    asyncio.run(run())


def test_a_worker_whose_partition_was_taken_over_cannot_store_it(postgres_url: str) -> None:
    async def run() -> None:
        store = PostgresStore(postgres_url)
        await store.start()
        checkpoints = PartitionStore(store, f"topic-{uuid.uuid4().hex[:8]}")
        await checkpoints.start()
        try:
            await checkpoints.commit([], Derived(), [PartitionCheckpoint(0, 10, b"a", since=0)], 1)
            # the partition's new owner restored offset 10 and stored on to 20
            await checkpoints.commit([], Derived(), [PartitionCheckpoint(0, 20, b"b", since=10)], 2)
            # the old owner, stalled past its session timeout, still holds state from offset 10
            late = Batch.from_messages(second(0, seq=11 << 24))
            with pytest.raises(CheckpointMoved, match="partition 0's checkpoint moved on from offset 10"):
                await checkpoints.commit([late], Derived(), [PartitionCheckpoint(0, 15, b"c", since=10)], 3)
            saved = await checkpoints.load(0)
        finally:
            await store.close()
        assert saved is not None
        assert (saved.next_offset, saved.state) == (20, b"b")
        assert stored(postgres_url) == (0, 0)  # its readings were rolled back with the checkpoint

    asyncio.run(run())
