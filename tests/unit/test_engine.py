"""The embedded pipeline without HTTP: memory bus → engine → in-memory store, live stats, fan-out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fleetstream.adapters.bus.memory import MemoryBus
from fleetstream.config import Settings
from fleetstream.domain.batch import Batch
from fleetstream.domain.clock import ManualClock
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.engine.fanout import Hub
from fleetstream.errors import BusUnavailable, Overloaded, StoreError
from fleetstream.runtime import Runtime
from fleetstream.testing import Harness, InMemoryStore

T0 = "2023-11-14T22:13:20Z"


def reading(
    device: str, second: int, value: float, sensor: str = "temperature", **extra: Any
) -> dict[str, Any]:
    return {
        "device_id": device,
        "ts": f"2023-11-14T22:{13 + second // 60:02d}:{second % 60:02d}Z",
        "sensor": sensor,
        "value": value,
        **extra,
    }


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_accepted_readings_are_stored_counted_and_deduplicated() -> None:
    async def scenario() -> Harness:
        async with Harness() as h:
            first = await h.post([reading("a", 0, 1.0), reading("a", 1, 2.0), reading("b", 0, 3.0)])
            again = await h.post([reading("a", 0, 1.0), reading("a", 2, 4.0)])
            assert (first.accepted, again.accepted) == (3, 2)
            assert [r.value for r in h.store.readings] == [1.0, 2.0, 3.0, 4.0]
            engine = h.runtime.engine
            assert engine.dedup.duplicates_total == 1
            stats = engine.stats.sensors["temperature"]
            assert (stats.count, stats.min, stats.max, stats.mean) == (4, 1.0, 4.0, 2.5)
            assert [m.seq for m in h.store.messages] == [1, 2, 3, 4]
        return h

    run(scenario())


def test_msg_id_is_the_dedup_key_when_given() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            await h.post([reading("a", 0, 1.0, msg_id="m1"), reading("a", 5, 1.0, msg_id="m1")])
            assert len(h.store.readings) == 1

    run(scenario())


def test_old_resend_beyond_the_horizon_is_checked_against_the_store() -> None:
    settings = Settings(
        simulator={"enabled": False}, stream={"out_of_orderness_s": 2, "allowed_lateness_s": 8}
    )

    async def scenario() -> None:
        async with Harness(settings) as h:
            await h.post([reading("a", 0, 1.0)])
            await h.post([reading("a", 120, 2.0)])  # moves the horizon past second 0
            await h.post([reading("a", 0, 1.0), reading("a", 1, 5.0), reading("a", 1, 5.0)])
            assert sorted(r.value for r in h.store.readings) == [1.0, 2.0, 5.0]

    run(scenario())


def test_startup_events_are_durable_messages_and_deduplicated() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            startup = {"device_id": "h1", "type": "startup", "ts": T0}
            await h.post([startup, startup])
            await h.post(startup)
            assert [(m.device_id, m.kind) for m in h.store.messages] == [("h1", "startup")]

    run(scenario())


def test_a_failed_write_fails_the_request_and_the_retry_is_not_a_duplicate() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            h.store.fail_next = OSError("disk full")
            with pytest.raises(StoreError, match="disk full"):
                await h.post([reading("a", 0, 1.0)])
            assert h.store.readings == []
            result = await h.post([reading("a", 0, 1.0)])
            assert result.accepted == 1
            assert len(h.store.readings) == 1
            assert h.store.messages[0].seq >= 1  # the failed batch's numbers are not reused

    run(scenario())


def test_a_failed_write_also_fails_the_overlapping_batch_that_deduplicated_against_it() -> None:
    """Batch 2 is deduplicated while batch 1 is still being written; batch 1's write fails. The
    re-send of batch 1's reading inside batch 2 was dropped as a duplicate, so batch 2's sender must
    not get a 202: it gets the error, retries, and the reading is stored exactly once."""

    class SlowFirstWrite(InMemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()
            self.calls = 0

        async def write(self, batch: Batch) -> None:
            self.calls += 1
            if self.calls == 1:
                await self.release.wait()
                raise OSError("disk full")
            await super().write(batch)

    async def scenario() -> None:
        store = SlowFirstWrite()
        settings = Settings(simulator={"enabled": False})
        runtime = Runtime(settings, bus=MemoryBus(), store=store, clock=ManualClock(1_700_000_000_000_000))
        await runtime.start()
        gateway = runtime.gateway

        async def post(items: list[dict[str, Any]]) -> Any:
            return await gateway.ingest(json.dumps(items).encode(), "application/json")

        first = asyncio.create_task(post([reading("a", 0, 1.0)]))
        await asyncio.sleep(0.01)  # batch 1 is being written
        second = asyncio.create_task(post([reading("a", 0, 1.0), reading("b", 0, 2.0)]))
        await asyncio.sleep(0.01)  # batch 2 deduplicated (a/0 dropped) and written
        store.release.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        retry = await post([reading("a", 0, 1.0), reading("b", 0, 2.0)])
        assert retry.accepted == 2
        assert sorted((r.device_id, r.value) for r in store.readings) == [("a", 1.0), ("b", 2.0)]
        await runtime.stop()

    run(scenario())


def test_concurrent_posts_share_group_commits() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            posts = [h.post([reading(f"d{i}", 0, float(i))]) for i in range(200)]
            results = await asyncio.gather(*posts)
            assert sum(r.accepted for r in results) == 200
            assert len(h.store.readings) == 200
            assert h.store.writes < 200  # many requests per commit

    run(scenario())


def test_restart_restores_position_and_dedup_memory() -> None:
    async def scenario() -> None:
        h = Harness()
        async with h:
            await h.post([reading("a", 0, 1.0)])
        h2 = Harness()
        h2.store.messages = h.store.messages
        async with h2:
            await h2.post([reading("a", 0, 1.0), reading("a", 1, 2.0)])
            assert [m.seq for m in h2.store.messages] == [1, 2]
            assert len(h2.store.readings) == 2

    run(scenario())


def test_clean_stop_stores_everything_already_accepted() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.runtime.start()
        posts = [asyncio.create_task(h.post([reading(f"d{i}", 0, 1.0)])) for i in range(50)]
        await asyncio.sleep(0)
        await h.runtime.stop()
        done = await asyncio.gather(*posts, return_exceptions=True)
        acked = sum(1 for d in done if not isinstance(d, BaseException))
        assert acked == len(h.store.readings) == 50

    run(scenario())


# -- memory bus ------------------------------------------------------------------------------


def msg(device: str, ts: int = 1) -> DeviceMessage:
    return DeviceMessage(device, ts, "telemetry", "Sensor", [Reading(device, ts, "t", 1.0)])


def test_memory_bus_refuses_when_full_and_without_consumer() -> None:
    async def scenario() -> None:
        bus = MemoryBus(max_pending=2, ack_timeout_s=0.2)
        with pytest.raises(BusUnavailable, match="no processor"):
            await bus.publish("readings", Batch.from_messages([msg("a")]))
        batches = bus.subscribe("readings", "g", 100)
        pending = asyncio.create_task(bus.publish("readings", Batch.from_messages([msg("a"), msg("b")])))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full"):
            await bus.publish("readings", Batch.from_messages([msg("c")]))
        batch = await anext(batches)
        assert [m.device_id for m in batch.batch.messages()] == ["a", "b"]
        await batch.commit()
        await pending
        with pytest.raises(Overloaded, match="not made durable within"):
            await bus.publish("readings", Batch.from_messages([msg("d")]))  # consumed by no one: times out
        await bus.close()

    run(scenario())


def test_memory_bus_fail_reaches_the_publisher() -> None:
    async def scenario() -> None:
        bus = MemoryBus()
        batches = bus.subscribe("readings", "g", 100)
        pending = asyncio.create_task(bus.publish("readings", Batch.from_messages([msg("a")])))
        batch = await anext(batches)
        await batch.fail(StoreError("nope"))
        with pytest.raises(StoreError, match="nope"):
            await pending

    run(scenario())


# -- fan-out ---------------------------------------------------------------------------------


def test_hub_skips_for_a_slow_subscriber_then_drops_a_stalled_one() -> None:
    async def scenario() -> None:
        now = [0.0]
        hub = Hub(lambda: now[0], max_queue=2, stall_timeout_s=5)
        slow = hub.subscribe()
        follower = hub.subscribe(["b"])
        hub.publish(Batch.from_messages([msg("a"), msg("b"), msg("a")]))
        assert slow.skipped == 1
        assert not slow.dropped
        assert (await follower.get()).device_id == "b"  # type: ignore[union-attr]
        now[0] = 10.0
        hub.publish(Batch.from_messages([msg("a")]))
        assert slow.dropped
        assert hub.dropped_total == 1
        assert [(await slow.get()) is not None for _ in range(3)] == [True, True, False]
        follower.close()
        assert len(hub) == 0

    run(scenario())
