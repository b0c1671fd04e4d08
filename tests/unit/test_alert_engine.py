"""Rules in the engine: alerts stored and in the twin's history, ack, clear, restart and crash replay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from fleetstream.config import Settings
from fleetstream.errors import Conflict, InvalidDefinition, NotFound
from fleetstream.runtime import Runtime
from fleetstream.testing import Harness, InMemoryStore

S = 1_000_000
BASE_S = 1_717_243_200  # 2024-06-01T12:00:00Z
HOT = {
    "id": "hot",
    "name": "Too hot",
    "severity": "warning",
    "when": {"sensor": "temperature", "op": ">", "threshold": 80, "clear_at": 78},
}
YARD = {"id": "yard", "name": "Yard", "rectangle": {"south": 52.0, "west": 4.0, "north": 53.0, "east": 5.0}}


def at(second: float) -> str:
    return datetime.fromtimestamp(BASE_S + second, UTC).isoformat()


def reading(device: str, second: float, value: float, sensor: str = "temperature") -> dict[str, Any]:
    return {"device_id": device, "ts": at(second), "sensor": sensor, "value": value}


def fix(device: str, second: float, lat: float, lon: float) -> dict[str, Any]:
    return {"device_id": device, "ts": at(second), "latitude": lat, "longitude": lon}


def kinds(store: InMemoryStore, device: str) -> list[tuple[int, str]]:
    return [
        (e.ts, e.type)
        for (d, _), e in sorted(store.events.items())
        if d == device and e.type.startswith(("alert_", "zone_"))
    ]


def test_rule_opens_acks_clears_and_survives_a_restart() -> None:
    async def scenario() -> None:
        async with Harness(start_us=(BASE_S + 100) * S) as h:
            engine = h.runtime.engine
            await engine.rules.put("rules", HOT)
            for second, value in [(1, 79.0), (2, 80.5), (3, 79.0), (4, 81.0), (5, 77.0), (6, 82.0)]:
                await h.post([reading("oven", second, value)])
            await engine.flush()
            # 80.5 opens; 79 and 81 stay within the hysteresis band; 77 clears; 82 opens a new alert.
            assert sorted(h.store.alerts) == [f"hot:oven:{(BASE_S + 2) * S}", f"hot:oven:{(BASE_S + 6) * S}"]
            first = h.store.alerts[f"hot:oven:{(BASE_S + 2) * S}"]
            assert (first.state, first.first_value, first.last_value, first.cleared_at) == (
                "cleared",
                80.5,
                77.0,
                (BASE_S + 5) * S,
            )
            assert kinds(h.store, "oven") == [
                ((BASE_S + 2) * S, "alert_opened"),
                ((BASE_S + 5) * S, "alert_cleared"),
                ((BASE_S + 6) * S, "alert_opened"),
            ]
            open_id = f"hot:oven:{(BASE_S + 6) * S}"
            acked = await engine.rules.acknowledge(open_id, "ana", "fan replaced")
            assert (acked.state, acked.acknowledged_by) == ("acknowledged", "ana")
            assert h.store.alerts[open_id].state == "acknowledged"
            with pytest.raises(Conflict):
                await engine.rules.acknowledge(f"hot:oven:{(BASE_S + 2) * S}", "ana", None)
            with pytest.raises(NotFound):
                await engine.rules.acknowledge("nope", "ana", None)
            events_before = dict(h.store.events)
        # A clean restart on the same store: same rules, same open alert (acknowledged), same events.
        again = Runtime(Settings(simulator={"enabled": False}), store=h.store, clock=h.clock)
        await again.start()
        try:
            book = again.engine.processors.rules.alerts
            assert [(a.id, a.state) for a in book.open_alerts()] == [(open_id, "acknowledged")]
            assert again.engine.rules.listing("rules") == [HOT]
            assert h.store.events == events_before
        finally:
            await again.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("twins_stored_ahead", [False, True])
def test_a_crash_replays_to_the_same_alerts_and_events(twins_stored_ahead: bool) -> None:
    async def scenario() -> None:
        h = Harness(start_us=(BASE_S + 100) * S)
        await h.runtime.start()
        engine = h.runtime.engine
        await engine.rules.put("rules", HOT)
        await engine.rules.put("zones", YARD)
        await h.post([reading("oven", 1, 70.0), fix("t1", 1, 52.5, 4.5)])
        await engine.flush()  # checkpoint here
        await h.post([reading("oven", 2, 85.0), fix("t1", 2, 54.0, 4.5)])
        await h.post([reading("oven", 3, 60.0), fix("t1", 3, 52.1, 4.9)])
        if twins_stored_ahead:  # a device listing stores changed twins between checkpoints
            await engine.store_twins()
        await engine._flush(checkpoint=False)  # stored, but the checkpoint stays behind
        events = dict(h.store.events)
        alerts = {k: a.to_state() for k, a in h.store.alerts.items()}
        assert kinds(h.store, "t1") == [
            ((BASE_S + 1) * S, "zone_entered"),
            ((BASE_S + 2) * S, "zone_left"),
            ((BASE_S + 3) * S, "zone_entered"),
        ]
        assert kinds(h.store, "oven") == [
            ((BASE_S + 2) * S, "alert_opened"),
            ((BASE_S + 3) * S, "alert_cleared"),
        ]
        assert [a["state"] for a in alerts.values()] == ["cleared"]
        # The crash: nothing more is flushed; the background tasks simply die with the process.
        for task in (engine._task, engine._flusher):
            assert task is not None
            task.cancel()
        again = Runtime(Settings(simulator={"enabled": False}), store=h.store, clock=h.clock)
        await again.start()
        try:
            assert again.engine.replayed > 0
            assert h.store.events == events
            assert {k: a.to_state() for k, a in h.store.alerts.items()} == alerts
        finally:
            await again.stop()

    asyncio.run(scenario())


def test_bad_definitions_are_refused_with_the_reason() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            rules = h.runtime.engine.rules
            with pytest.raises(InvalidDefinition, match="unknown operator"):
                await rules.put("rules", {**HOT, "when": {"sensor": "t", "op": "=~", "threshold": 1}})
            with pytest.raises(InvalidDefinition, match="latitude 95 is outside"):
                await rules.put(
                    "zones", {"id": "z", "rectangle": {"south": 95, "west": 0, "north": 96, "east": 1}}
                )
            await rules.put("rules", HOT)
            with pytest.raises(Conflict):
                await rules.put("rules", HOT)
            with pytest.raises(InvalidDefinition, match="not the id in the path"):
                await rules.put("rules", HOT, "other")
            with pytest.raises(NotFound):
                await rules.put("rules", {**HOT, "id": "ghost"}, "ghost")
            with pytest.raises(NotFound):
                await rules.delete("zones", "ghost")
            assert h.store.defs["rules"] == {"hot": HOT}

    asyncio.run(scenario())


def test_deleting_a_rule_clears_its_open_alerts() -> None:
    async def scenario() -> None:
        async with Harness(start_us=(BASE_S + 100) * S) as h:
            engine = h.runtime.engine
            await engine.rules.put("rules", HOT)
            await h.post([reading("oven", 1, 90.0)])
            assert len(engine.processors.rules.alerts) == 1
            await engine.rules.delete("rules", "hot")
            await engine.flush()
            assert len(engine.processors.rules.alerts) == 0
            assert [a.state for a in h.store.alerts.values()] == ["cleared"]
            assert h.store.defs["rules"] == {}

    asyncio.run(scenario())


def test_offline_opens_at_last_reading_plus_t_even_when_the_whole_fleet_is_quiet() -> None:
    async def scenario() -> None:
        now = (BASE_S + 100) * S
        async with Harness(start_us=now) as h:
            engine = h.runtime.engine
            await engine.rules.put("rules", {"kind": "offline", "id": "silent", "after_s": 5})
            await h.post([reading("once", 100, 20.0)])  # sent once, never again
            h.clock.advance(4)
            await engine.tick()
            assert len(engine.processors.rules.alerts) == 0
            # Nothing arrives: after the idle timeout (10 s) the wall clock stands in for event time.
            h.clock.advance(7)
            await engine.tick()
            [alert] = engine.processors.rules.alerts.open_alerts()
            assert (alert.rule_id, alert.device_id, alert.opened_at) == ("silent", "once", now + 5 * S)
            await h.post([reading("once", 112, 21.0)])  # speaks again: clears at that reading
            await engine.flush()
            stored = h.store.alerts[alert.id]
            assert (stored.state, stored.cleared_at) == ("cleared", now + 12 * S)
            assert kinds(h.store, "once") == [(now + 5 * S, "alert_opened"), (now + 12 * S, "alert_cleared")]

    asyncio.run(scenario())


def test_acknowledgements_after_the_checkpoint_survive_a_crash() -> None:
    async def scenario() -> None:
        h = Harness(start_us=(BASE_S + 100) * S)
        await h.runtime.start()
        engine = h.runtime.engine
        await engine.rules.put("rules", HOT)
        await h.post([reading("oven", 1, 90.0), reading("stove", 1, 95.0)])
        await engine.flush()  # the checkpoint holds both alerts, active
        oven, stove = f"hot:oven:{(BASE_S + 1) * S}", f"hot:stove:{(BASE_S + 1) * S}"
        await engine.rules.acknowledge(oven, "ana", "on it")
        await engine.rules.acknowledge(stove, "bob", None)
        await h.post([reading("oven", 2, 70.0)])  # clears the oven's: replayed after the crash
        await engine._flush(checkpoint=False)
        for task in (engine._task, engine._flusher):
            assert task is not None
            task.cancel()
        again = Runtime(Settings(simulator={"enabled": False}), store=h.store, clock=h.clock)
        await again.start()
        try:
            assert again.engine.replayed > 0
            # The replay wrote the oven's alert again from a state without the acknowledgement.
            cleared = h.store.alerts[oven]
            assert (cleared.state, cleared.acknowledged_by, cleared.ack_note, cleared.cleared_at) == (
                "cleared",
                "ana",
                "on it",
                (BASE_S + 2) * S,
            )
            [still] = again.engine.processors.rules.alerts.open_alerts()
            assert (still.id, still.state, still.acknowledged_by) == (stove, "acknowledged", "bob")
        finally:
            await again.stop()
        assert h.store.alerts[stove].state == "acknowledged"

    asyncio.run(scenario())


def test_a_zone_rule_needs_its_zone_and_a_used_zone_cannot_be_deleted() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            rules = h.runtime.engine.rules
            stay = {"kind": "zone", "id": "stay", "zone_id": "yard"}
            with pytest.raises(InvalidDefinition, match="zone 'yard' does not exist"):
                await rules.put("rules", stay)
            await rules.put("zones", YARD)
            await rules.put("rules", stay)
            with pytest.raises(Conflict, match=r"zone 'yard' is used by rule\(s\) stay"):
                await rules.delete("zones", "yard")
            await rules.delete("rules", "stay")
            await rules.delete("zones", "yard")
            assert h.store.defs == {"rules": {}, "zones": {}}

    asyncio.run(scenario())


def test_an_escalation_raises_the_severity_and_is_a_device_event() -> None:
    async def scenario() -> None:
        async with Harness(start_us=(BASE_S + 100) * S) as h:
            engine = h.runtime.engine
            rule = {**HOT, "escalate_after_us": 5 * S, "escalate_to": "critical"}
            await engine.rules.put("rules", rule)
            await h.post([reading("oven", 1, 90.0)])
            await h.post([reading("other", 7, 20.0)])  # event time passes 1 + 5 s
            await engine.tick()
            await engine.flush()
            [alert] = h.store.alerts.values()
            assert (alert.severity, alert.state, alert.opened_at) == ("critical", "active", (BASE_S + 1) * S)
            assert kinds(h.store, "oven") == [
                ((BASE_S + 1) * S, "alert_opened"),
                ((BASE_S + 6) * S, "alert_escalated"),
            ]

    asyncio.run(scenario())
