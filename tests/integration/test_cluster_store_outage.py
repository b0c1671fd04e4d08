"""A worker whose store goes away while a batch is in hand: the batch fails, and restoring the
partitions from their checkpoints fails too while the store is still away. The worker must wait for
the store and then process the batch, not end its consumer loop and stay in the group doing nothing
(every acknowledged reading would wait in Kafka until someone restarted it)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.cluster import worker as worker_module
from fleetstream.cluster.worker import Worker
from fleetstream.config import load_settings
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.errors import StoreError

from ..servers import Tansu

pytestmark = [pytest.mark.integration, pytest.mark.slow]
psycopg = pytest.importorskip("psycopg")

T0 = 1_717_200_000_000_000
DEVICES = 8


async def until(check: Any, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def test_a_worker_waits_out_a_store_outage_and_stores_the_batch(
    module_tansu: Tansu, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus_url = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=4"
    settings = load_settings(bus=bus_url, store=postgres_url, table=False)
    monkeypatch.setattr(worker_module, "RESTORE_RETRY_S", 0.1, raising=False)
    batch = Batch.from_messages(
        DeviceMessage(f"o-{d}", T0, "telemetry", "Sensor", [Reading(f"o-{d}", T0, "t", float(d))])
        for d in range(DEVICES)
    )

    async def run() -> tuple[int, int, bool]:
        node = Worker(settings, worker_id="outage")
        await node.start()
        await until(lambda: sorted(node.partitions) == [0, 1, 2, 3], 60)
        down = {"loads": 0, "stores": 0}
        store_batch, load_checkpoint = node._store, node.checkpoints.load

        async def unreachable_store(*args: Any, **kwargs: Any) -> Any:
            if down["stores"] == 0:
                down["stores"] += 1
                raise StoreError("PostgreSQL unreachable: connection refused")
            return await store_batch(*args, **kwargs)

        async def unreachable_load(number: int) -> Any:
            if down["loads"] < 3:  # still away when the worker first restores after the failure
                down["loads"] += 1
                raise StoreError("PostgreSQL unreachable: connection refused")
            return await load_checkpoint(number)

        monkeypatch.setattr(node, "_store", unreachable_store)
        monkeypatch.setattr(node.checkpoints, "load", unreachable_load)
        producer = KafkaBus(bus_url)
        await producer.start()
        await producer.publish("readings", batch)
        await producer.close()
        await until(lambda: node.readings_total == DEVICES or not node.running, 60)
        running = node.running
        await node.stop()
        with psycopg.connect(postgres_url) as con:
            (stored,) = con.execute("SELECT count(*) FROM readings WHERE device_id LIKE 'o-%'").fetchone()
        return stored, down["loads"], running

    stored, failed_loads, running = asyncio.run(run())
    assert failed_loads == 3  # the restore met the outage, and waited it out
    assert running
    assert stored == DEVICES
