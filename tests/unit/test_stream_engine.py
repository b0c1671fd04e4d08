"""The engine drives windows, twins and checkpoints: emitted records are stored, a crash is replayed.

In-memory store and manual clock (the same run against DuckDB and a real SIGKILL is
``tests/integration/test_recovery.py``).
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import msgspec

from fleetstream.config import Settings
from fleetstream.runtime import Runtime
from fleetstream.testing import Harness, InMemoryStore

S = 1_000_000
BASE_S = 1_717_243_200  # 2024-06-01T12:00:00Z


def at(second: float) -> str:
    whole = int(second)
    micro = round((second - whole) * 1_000_000)
    return datetime.fromtimestamp(BASE_S + whole, UTC).replace(microsecond=micro).isoformat()


def reading(device: str, second: float, value: float, sensor: str = "temperature") -> dict[str, Any]:
    return {"device_id": device, "ts": at(second), "sensor": sensor, "value": value}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def final_windows(store: InMemoryStore) -> dict[tuple[str, str, int, int], tuple[Any, ...]]:
    return {
        key: (w.count, w.sum, w.min, w.max, w.first, w.last, w.quantile(0.5))
        for key, w in store.windows.items()
    }


def test_windows_close_on_the_watermark_update_within_lateness_and_count_late() -> None:
    async def scenario() -> None:
        async with Harness(start_us=(BASE_S + 100) * S) as h:
            engine = h.runtime.engine
            await h.post([reading("t1", 7, 22.0), reading("t1", 2, 20.0)])
            await h.post([reading("t1", 4, 21.0)])
            await engine.flush()
            assert h.store.windows == {}  # watermark 12:00:02: still open
            await h.post([reading("t1", 16, 23.0)])  # watermark 12:00:11: [0, 10) closes
            await engine.flush()
            w = h.store.windows[("temperature", "*", 10 * S, BASE_S * S)]
            assert (w.count, w.mean, w.min, w.max, w.first, w.last, w.version) == (
                3,
                21.0,
                20.0,
                22.0,
                20.0,
                22.0,
                1,
            )
            assert h.store.windows[("temperature", "t1", 10 * S, BASE_S * S)].count == 3
            await h.post([reading("t1", 5, 25.0)])  # late, within the 30 s lateness: version 2
            await engine.flush()
            w = h.store.windows[("temperature", "*", 10 * S, BASE_S * S)]
            assert (w.count, w.max, w.version) == (4, 25.0, 2)
            await h.post([reading("t1", 50, 22.0)])  # watermark 12:00:45: [0, 10) is final
            await h.post([reading("t1", 3, 30.0)])  # too late for 10 s, in time for 1 min
            await engine.flush()
            assert h.store.windows[("temperature", "*", 10 * S, BASE_S * S)].count == 4
            assert engine.processors.late_total == {"temperature": 1}
            assert list(zip(h.store.late.device_id, h.store.late.ts, h.store.late.size_us, strict=True)) == [
                ("t1", (BASE_S + 3) * S, 10 * S)
            ]
            assert len(h.store.readings) == 7  # the late reading is stored all the same
            h.clock.advance(60)  # quiet: the watermark follows the wall clock after the idle timeout
            await engine.tick()
            h.clock.advance(20)
            await engine.tick()
            await engine.flush()
            minute = h.store.windows[("temperature", "*", 60 * S, BASE_S * S)]
            assert (minute.count, minute.max) == (7, 30.0)

    run(scenario())


def test_twin_events_are_stored_and_the_twin_follows_the_newest_event_time() -> None:
    async def scenario() -> None:
        async with Harness(start_us=(BASE_S + 100) * S) as h:
            engine = h.runtime.engine
            await h.post([reading("t1", 10, 21.0), reading("t1", 5, 99.0)])
            await h.post([{"device_id": "t1", "type": "startup", "ts": at(11)}])
            await engine.flush()
            twin = engine.processors.twins.get("t1")
            assert twin is not None
            assert twin.sensors["temperature"] == (21.0, (BASE_S + 10) * S)  # not the older 99.0
            types = [e.type for (_, _), e in sorted(h.store.events.items())]
            assert types[0] == "registered"
            assert "startup" in types
            assert h.store.twins["t1"].version == twin.version

    run(scenario())


def load(seed: int) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    sends: list[tuple[float, dict[str, Any]]] = []
    for second in range(120):
        for d in range(5):
            roll = rng.random()
            delay = 45 if roll < 0.02 else rng.uniform(12, 25) if roll < 0.05 else rng.uniform(0, 3)
            sends.append((second + delay, reading(f"d{d}", second, round(rng.uniform(10, 30), 2))))
    sends += [(t + rng.uniform(1, 4), body) for t, body in sends if rng.random() < 0.05]  # re-sends
    ordered = [body for _, body in sorted(sends, key=lambda pair: pair[0])]
    return [ordered[i : i + 17] for i in range(0, len(ordered), 17)]


def outcome(store: InMemoryStore) -> tuple[Any, ...]:
    events = sorted((k, e.ts, e.type, repr(e.payload)) for k, e in store.events.items())
    twins = {d: t.to_state() for d, t in store.twins.items()}
    late = sorted(zip(store.late.seq, store.late.size_us, strict=True))
    return final_windows(store), events, twins, late, len(store.readings)


def test_a_crash_replayed_from_the_checkpoint_equals_an_uninterrupted_run() -> None:
    batches = load(3)
    settings = Settings(simulator={"enabled": False})

    async def uninterrupted() -> InMemoryStore:
        async with Harness(settings, start_us=(BASE_S + 200) * S) as h:
            for batch in batches:
                await h.post(batch)
            h.clock.advance(600)
            await h.runtime.engine.tick()
            await h.runtime.engine.flush()
            return h.store

    async def crashing() -> InMemoryStore:
        h = Harness(settings, start_us=(BASE_S + 200) * S)
        await h.runtime.start()
        for i, batch in enumerate(batches):
            await h.post(batch)
            if i == len(batches) // 3:
                await h.runtime.engine.flush()  # a checkpoint, then more work that is lost
        cut = 2 * len(batches) // 3
        # The crash: nothing more is flushed; the background tasks simply die with the process.
        for task in (h.runtime.engine._task, h.runtime.engine._flusher):
            assert task is not None
            task.cancel()
        store = h.store
        restarted = Runtime(settings, store=store, clock=h.clock)
        await restarted.start()
        assert restarted.engine.replayed > 0
        for batch in batches[cut:]:  # the sender re-sends what it had no answer for, and goes on
            await restarted.gateway.ingest(msgspec.json.encode(batch), "application/json")
        h.clock.advance(600)
        await restarted.engine.tick()
        await restarted.engine.flush()
        await restarted.stop()
        return store

    expected = outcome(run(uninterrupted()))
    got = outcome(run(crashing()))
    assert got[4] == expected[4]  # every reading stored once
    assert expected[3]  # the load has late readings
    assert got[3] == expected[3]
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert got[2] == expected[2]


def test_an_evicted_twin_is_stored_then_reloaded_on_its_next_reading() -> None:
    stream = {"idle_after_s": 1, "offline_after_s": 2, "evict_after_s": 3}
    settings = Settings(simulator={"enabled": False}, stream=stream)

    async def scenario() -> None:
        async with Harness(settings, start_us=(BASE_S + 100) * S) as h:
            engine = h.runtime.engine
            await h.post([reading("quiet", 0, 1.0)])
            for second in range(1, 12):  # another device moves event time on; "quiet" goes offline
                await h.post([reading("busy", second, 2.0)])
            await engine.tick()  # eviction runs with the timers
            assert engine.processors.twins.get("quiet") is None
            await engine.flush()
            assert h.store.twins["quiet"].status == "offline"
            await h.post([reading("quiet", 12, 3.0)])  # reloaded from the store, and continues
            twin = engine.processors.twins.get("quiet")
            assert twin is not None
            assert (twin.readings, twin.status, twin.sensors["temperature"]) == (
                2,
                "online",
                (3.0, (BASE_S + 12) * S),
            )
            await engine.flush()
            types = [e.type for (device, _), e in sorted(h.store.events.items()) if device == "quiet"]
            assert types.count("registered") == 1
            assert types[-1] == "status_changed"

    run(scenario())
