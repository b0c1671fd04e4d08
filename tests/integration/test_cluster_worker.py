"""A worker that dies after its store transaction and before committing the Kafka offsets: the next
owner of its partitions re-reads those records and must neither store nor process them again."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.bus.kafka_subscription import KafkaBatch
from fleetstream.cluster.worker import Worker
from fleetstream.config import load_settings
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading

from ..servers import Tansu

pytestmark = [pytest.mark.integration, pytest.mark.slow]
psycopg = pytest.importorskip("psycopg")

T0 = 1_717_200_000_000_000
DEVICES = 6
SECONDS = 20


def load() -> list[Batch]:
    """One batch per second of event time, a reading per device, the previous second re-sent."""
    batches = []
    for s in range(SECONDS):
        seconds = [s - 1, s] if s else [s]
        batches.append(
            Batch.from_messages(
                DeviceMessage(
                    f"w-{d}",
                    T0 + t * 1_000_000,
                    "telemetry",
                    "Sensor",
                    [Reading(f"w-{d}", T0 + t * 1_000_000, "t", float(t))],
                )
                for t in seconds
                for d in range(DEVICES)
            )
        )
    return batches


async def until(check: object, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def test_records_stored_but_not_committed_are_skipped_by_the_next_owner(
    module_tansu: Tansu, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus_url = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=4"
    settings = load_settings(bus=bus_url, store=postgres_url, table=False)

    async def run() -> tuple[int, int, int]:
        producer = KafkaBus(bus_url)
        await producer.start()
        for batch in load():
            await producer.publish("readings", batch)
        await producer.close()
        expected = DEVICES * SECONDS

        async def no_commit(self: KafkaBatch) -> None:  # the worker "dies" before every commit
            return None

        with monkeypatch.context() as patch:
            patch.setattr(KafkaBatch, "commit", no_commit)
            first = Worker(settings, worker_id="first")
            await first.start()
            await until(lambda: first.readings_total == expected, 60)
            await first.stop()

        second = Worker(settings, worker_id="second")
        await second.start()
        await until(lambda: sorted(second.partitions) == [0, 1, 2, 3], 60)
        await until(lambda: second.skipped_total >= len(load()), 30)
        await asyncio.sleep(1.0)
        await second.stop()
        with psycopg.connect(postgres_url) as con:
            (stored,) = con.execute("SELECT count(*) FROM readings").fetchone()
            (distinct,) = con.execute("SELECT count(DISTINCT (device_id, ts)) FROM readings").fetchone()
        assert stored == distinct
        return stored, second.readings_total, second.skipped_total

    stored, reprocessed, skipped = asyncio.run(run())
    assert stored == DEVICES * SECONDS  # each reading once, duplicates dropped
    assert reprocessed == 0  # nothing stored or processed twice
    assert skipped > 0
