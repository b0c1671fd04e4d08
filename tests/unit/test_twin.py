"""Device twins by event sourcing: the events a stream produces, the twins they fold into, and recovery."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetstream.domain.batch import Batch
from fleetstream.domain.events import DeviceEvent, DeviceTwin, Row
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.domain.twin import TwinProcessor, TwinSettings

S = 1_000_000
T0 = 1_700_000_000 * S
SETTINGS = TwinSettings(
    idle_after_us=30 * S, offline_after_us=120 * S, evict_after_us=600 * S, idle_timeout_us=10 * S
)


def at(seconds: float) -> int:
    return T0 + round(seconds * S)


def message(
    device: str,
    seconds: float,
    kind: str = "telemetry",
    device_type: str = "Thermostat",
    received: float | None = None,
    **values: float,
) -> DeviceMessage:
    ts = at(seconds)
    readings = [Reading(device, ts, name, v, None, device_type) for name, v in values.items()]
    arrived = ts if received is None else at(received)
    return DeviceMessage(device, ts, kind, device_type, readings, received_at=arrived)


class Log:
    """Numbers batches as the engine does: each batch's rows, then its reading-less messages."""

    def __init__(self) -> None:
        self.position = 0

    def batch(self, *messages: DeviceMessage) -> Batch:
        batch = Batch.from_messages(messages)
        batch.seq = list(range(self.position + 1, self.position + 1 + len(batch)))
        self.position += len(batch)
        for m in batch.events:
            self.position += 1
            m.seq = self.position
        return batch


def run(proc: TwinProcessor, batches: Sequence[Batch]) -> list[DeviceEvent]:
    out: list[DeviceEvent] = []
    for b in batches:
        out += proc.on_batch(b, 0)
    return out


def kinds(events: Sequence[DeviceEvent], device: str | None = None) -> list[tuple[Any, ...]]:
    """(device, seq, type, event time in s after T0, payload) of each event."""
    return [
        (e.device_id, e.seq, e.type, (e.ts - T0) / S, e.payload)
        for e in events
        if device is None or e.device_id == device
    ]


def stored_rows(batches: Sequence[Batch], device: str) -> list[Row]:
    rows: list[Row] = []
    for b in batches:
        for i, d in enumerate(b.device_id):
            if d == device:
                rows.append((b.seq[i], b.ts[i], b.sensor[i], b.value[i], b.msg[i]))
    return rows


def test_settings_must_order_the_silences() -> None:
    with pytest.raises(ValueError, match="idle_after < offline_after <= evict_after"):
        TwinSettings(idle_after_us=60 * S, offline_after_us=60 * S)
    with pytest.raises(ValueError, match="idle_after < offline_after <= evict_after"):
        TwinSettings(offline_after_us=700 * S, evict_after_us=600 * S)


def test_a_device_is_registered_once_and_typed_by_its_first_specific_type() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    events = run(
        proc,
        [
            log.batch(message("a", 1, device_type="Sensor", t=1.0)),
            log.batch(message("a", 2, device_type="Thermostat", t=2.0), message("a", 3, t=3.0)),
            log.batch(message("a", 4, device_type="Barometer", t=4.0)),
        ],
    )
    assert kinds(events) == [
        ("a", 1, "registered", 1.0, {"device_type": "Sensor"}),
        ("a", 2, "status_changed", 1.0, {"from": "offline", "to": "online"}),
        ("a", 3, "type_changed", 2.0, {"from": "Sensor", "to": "Thermostat"}),
    ]
    twin = proc.get("a")
    assert twin is not None
    assert (twin.device_type, twin.first_seen, twin.last_seen, twin.version) == (
        "Thermostat",
        at(1),
        at(4),
        3,
    )
    assert (twin.messages, twin.readings, twin.position) == (4, 4, 4)


def test_the_newest_event_time_wins_for_each_sensor() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    run(proc, [log.batch(message("a", 10, t=1.0, h=50.0), message("a", 30, t=3.0))])
    run(proc, [log.batch(message("a", 20, t=2.0, h=40.0))])  # late: only h is newer than what a has
    twin = proc.get("a")
    assert twin is not None
    assert twin.sensors == {"t": (3.0, at(30)), "h": (40.0, at(20))}
    assert (twin.last_seen, twin.messages, twin.readings) == (at(30), 3, 5)
    run(proc, [log.batch(message("a", 30, t=4.0))])  # as new as the newest: the later record wins
    assert twin.sensors == {"t": (4.0, at(30)), "h": (40.0, at(20))}
    assert (twin.last_seen, twin.messages, twin.readings) == (at(30), 4, 6)


def test_messages_older_than_the_last_leave_newer_values_last_seen_and_status_alone() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    batches = [log.batch(message("a", 10, t=1.0, h=50.0), message("a", 20, t=3.0))]
    batches.append(
        log.batch(
            message("a", 15, t=2.0, h=40.0, p=7.0),  # t stays 3.0 (20 s); h is newer; p is new
            message("a", 12, "heartbeat", cpu_usage=5.0),
            message("a", 11, "heartbeat", cpu_usage=6.0),  # older still: its event, not its value
        )
    )
    first = run(proc, batches[:1])
    late = run(proc, batches[1:])
    assert kinds(late) == [
        ("a", 3, "heartbeat", 12.0, {"cpu_usage": 5.0}),
        ("a", 4, "heartbeat", 11.0, {"cpu_usage": 6.0}),
    ]
    twin = proc.get("a")
    assert twin is not None
    assert twin.sensors == {
        "t": (3.0, at(20)),
        "h": (40.0, at(15)),
        "p": (7.0, at(15)),
        "cpu_usage": (5.0, at(12)),
    }
    assert (twin.status, twin.last_seen, twin.messages, twin.readings, twin.position) == (
        "online",
        at(20),
        5,
        8,
        8,
    )
    assert (twin.last_heartbeat, twin.heartbeat) == (at(12), {"cpu_usage": 5.0})
    assert proc.take_dirty() == [twin]
    assert DeviceTwin.replay("a", first + late, stored_rows(batches, "a")) == twin


def test_location_moves_on_a_newer_fix_at_another_place_only() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    events = run(
        proc,
        [
            log.batch(message("t", 10, latitude=52.0, longitude=4.0, temperature=3.0)),
            log.batch(message("t", 20, latitude=52.0, longitude=4.0)),  # same place
            log.batch(message("t", 5, latitude=9.0, longitude=9.0)),  # older fix
            log.batch(message("t", 25, latitude=52.0)),  # no longitude: not a fix
            log.batch(message("t", 30, latitude=53.5, longitude=4.5)),
        ],
    )
    moves = [(e.ts, e.payload, e.position) for e in events if e.type == "location_changed"]
    assert moves == [(at(10), {"lat": 52.0, "lon": 4.0}, 1), (at(30), {"lat": 53.5, "lon": 4.5}, 9)]
    twin = proc.get("t")
    assert twin is not None
    assert twin.location == (53.5, 4.5, at(30))
    assert twin.sensors["latitude"] == (53.5, at(30))


def test_heartbeats_and_startups_are_one_event_per_message() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    boot = DeviceMessage("h", at(1), "startup", "Host Monitor", [], received_at=at(1))
    events = run(
        proc,
        [
            log.batch(boot),
            log.batch(message("h", 2, "heartbeat", "Host Monitor", cpu_usage=79.5, mem_usage=10.5)),
            log.batch(message("h", 3, "temperature", "Host Monitor", temperature=41.0)),
        ],
    )
    assert kinds(events) == [
        ("h", 1, "registered", 1.0, {"device_type": "Host Monitor"}),
        ("h", 2, "startup", 1.0, {}),
        ("h", 3, "status_changed", 1.0, {"from": "offline", "to": "online"}),
        ("h", 4, "heartbeat", 2.0, {"cpu_usage": 79.5, "mem_usage": 10.5}),
    ]
    twin = proc.get("h")
    assert twin is not None
    assert (twin.last_startup, twin.last_heartbeat, twin.heartbeat) == (
        at(1),
        at(2),
        {"cpu_usage": 79.5, "mem_usage": 10.5},
    )
    assert (twin.messages, twin.readings, twin.position) == (3, 3, 4)


def test_silence_makes_a_device_idle_then_offline_at_its_deadlines_and_a_reading_brings_it_back() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    # "a" sends once at 0 s; "b" keeps the partition's time going, every 10 s.
    batches = [log.batch(message("a", 0, t=1.0))]
    batches += [log.batch(message("b", s, t=2.0)) for s in range(0, 140, 10)]
    batches.append(log.batch(message("a", 135, t=3.0)))
    per_batch = [proc.on_batch(b, 0) for b in batches]
    a_events = [kinds(events, "a") for events in per_batch]
    assert a_events[0] == [
        ("a", 1, "registered", 0.0, {"device_type": "Thermostat"}),
        ("a", 2, "status_changed", 0.0, {"from": "offline", "to": "online"}),
    ]
    # b's message at 30 s is not past a's deadline (0 s + 30 s); the one at 40 s is.
    assert a_events[4] == []
    assert a_events[5] == [("a", 3, "status_changed", 30.0, {"from": "online", "to": "idle"})]
    assert a_events[14] == [("a", 4, "status_changed", 120.0, {"from": "idle", "to": "offline"})]
    assert a_events[15] == [("a", 5, "status_changed", 135.0, {"from": "offline", "to": "online"})]
    assert [events for i, events in enumerate(a_events) if i not in (0, 5, 14, 15)] == [[]] * 12
    # A timer's event sits after the last record before the one that passed its deadline.
    idle = next(e for e in per_batch[5] if e.device_id == "a")
    assert idle.position == batches[4].seq[-1]
    twin, b = proc.get("a"), proc.get("b")
    assert twin is not None
    assert b is not None
    assert (twin.status, twin.version, b.status, b.version) == ("online", 5, "online", 2)


def test_a_timer_due_inside_a_batch_fires_between_its_messages() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    batch = log.batch(message("a", 0, t=1.0, h=1.0), message("b", 40, t=1.0), message("b", 150, t=1.0))
    assert [(e.device_id, e.type, e.payload.get("to"), e.position) for e in proc.on_batch(batch, 0)] == [
        ("a", "registered", None, 1),
        ("a", "status_changed", "online", 1),
        ("a", "status_changed", "idle", 2),  # after a's last row, before b's message at 40 s
        ("b", "registered", None, 3),
        ("b", "status_changed", "online", 3),
        ("b", "status_changed", "idle", 3),  # in deadline order: b's 70 s, then a's 120 s
        ("a", "status_changed", "offline", 3),
        ("b", "status_changed", "online", 4),
    ]


def test_a_startup_after_silence_comes_after_the_timers_it_passes() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    run(proc, [log.batch(message("a", 0, t=1.0))])
    boot = DeviceMessage("a", at(50), "startup", "Thermostat", [], received_at=at(50))
    assert kinds(proc.on_batch(log.batch(boot), 0)) == [
        ("a", 3, "status_changed", 30.0, {"from": "online", "to": "idle"}),
        ("a", 4, "startup", 50.0, {}),
        ("a", 5, "status_changed", 50.0, {"from": "idle", "to": "online"}),
    ]


def test_a_late_reading_does_not_bring_a_silent_device_back() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    run(proc, [log.batch(message("a", 0, t=1.0)), log.batch(message("b", 50, t=1.0))])
    late = proc.on_batch(log.batch(message("a", 10, received=50, t=2.0)), 0)
    assert late == []  # last seen 10 s, partition at 50 s: still silent for more than 30 s
    back = proc.on_batch(log.batch(message("a", 45, t=3.0)), 0)
    assert kinds(back) == [("a", 4, "status_changed", 45.0, {"from": "idle", "to": "online"})]


def test_a_device_first_heard_of_through_an_old_reading_is_offline_and_leaves_memory() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    run(proc, [log.batch(message("b", 200, t=1.0))])
    old = proc.on_batch(log.batch(message("c", 0, received=200, t=2.0)), at(200))
    assert kinds(old) == [("c", 1, "registered", 0.0, {"device_type": "Thermostat"})]
    c = proc.get("c")
    assert c is not None
    assert c.status == "offline"
    _, evicted = proc.on_timer(at(601))
    assert [t.device_id for t in evicted] == ["c"]


def test_a_clock_running_ahead_does_not_move_partition_time() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    run(proc, [log.batch(message("a", 0, t=1.0)), log.batch(message("fast", 3600, received=1, t=1.0))])
    assert proc.partition_time == at(1) + SETTINGS.max_ahead_us
    a = proc.get("a")
    assert a is not None
    assert a.status == "online"


def test_wall_clock_stands_in_when_the_partition_falls_silent() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    assert proc.on_timer(at(0)) == ([], [])  # first call: notes the time only
    proc.on_batch(log.batch(message("a", 0, t=1.0)), now_us=at(0))
    assert proc.on_timer(at(29)) == ([], [])
    events, evicted = proc.on_timer(at(35))
    assert kinds(events) == [("a", 3, "status_changed", 30.0, {"from": "online", "to": "idle"})]
    assert evicted == []
    assert proc.partition_time == at(35)
    events, _ = proc.on_timer(at(200))
    assert kinds(events) == [("a", 4, "status_changed", 120.0, {"from": "idle", "to": "offline"})]


def test_wall_clock_waits_while_records_keep_arriving() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    proc.on_batch(log.batch(message("a", 0, t=1.0)), now_us=at(0))
    proc.on_batch(log.batch(message("b", 1, t=1.0)), now_us=at(45))  # b's clock is behind: arrival counts
    assert proc.on_timer(at(50)) == ([], [])
    assert proc.partition_time == at(1)


def test_eviction_then_reload_keeps_the_twin() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    proc.on_batch(log.batch(message("a", 0, t=1.0, h=2.0)), now_us=at(0))
    proc.on_batch(log.batch(message("b", 0, t=1.0)), now_us=at(0))
    proc.take_dirty()
    events, evicted = proc.on_timer(at(599))
    assert [e.type for e in events] == ["status_changed"] * 4
    assert evicted == []
    events, evicted = proc.on_timer(at(601))
    assert events == []
    assert sorted(t.device_id for t in evicted) == ["a", "b"]
    assert proc.get("a") is None
    assert list(proc.twins()) == []
    assert proc.take_dirty() == []  # evicted twins go to the store through on_timer's result
    assert proc.missing(["a", "c"]) == {"a"}
    comeback = log.batch(message("a", 700, t=5.0))
    with pytest.raises(ValueError, match="load it"):
        proc.on_batch(comeback, at(700))
    stored = {t.device_id: DeviceTwin.from_state(json.loads(json.dumps(t.to_state()))) for t in evicted}
    proc.load([stored["a"]])
    assert proc.missing(["a", "b"]) == {"b"}
    events = proc.on_batch(comeback, at(700))
    assert kinds(events) == [("a", 5, "status_changed", 700.0, {"from": "offline", "to": "online"})]
    twin = proc.get("a")
    assert twin is not None
    assert (twin.messages, twin.readings, twin.first_seen, twin.sensors) == (
        2,
        3,
        at(0),
        {"t": (5.0, at(700)), "h": (2.0, at(0))},
    )
    assert [t.device_id for t in proc.take_dirty()] == ["a"]


def test_records_already_in_a_twin_are_skipped_on_replay() -> None:
    log = Log()
    batches = [
        log.batch(message("a", 0, t=1.0), message("b", 0, t=1.0)),
        log.batch(message("a", 10, t=2.0), DeviceMessage("a", at(11), "startup", "Thermostat", [])),
        log.batch(message("b", 50, t=3.0)),
        log.batch(message("a", 60, t=4.0), message("b", 60, t=4.0)),
    ]
    whole = TwinProcessor(SETTINGS)
    expected = run(whole, batches)

    proc = TwinProcessor(SETTINGS)
    first = run(proc, batches[:1])
    checkpoint = json.loads(json.dumps(proc.snapshot()))
    run(proc, batches[1:3])
    later = [DeviceTwin.from_state(t.to_state()) for t in proc.twins()]  # stored after the checkpoint
    before = [t.to_state() for t in later]

    again = TwinProcessor.restore(SETTINGS, checkpoint, later)
    assert run(again, batches[1:3]) == []
    assert [t.to_state() for t in again.twins()] == before
    rest = run(again, batches[3:])
    assert first + expected[len(first) : len(expected) - len(rest)] + rest == expected
    assert sorted(again.twins(), key=lambda t: t.device_id) == sorted(
        whole.twins(), key=lambda t: t.device_id
    )


# -- whatever the batch cuts, the same events and twins ------------------------------------------------

DEVICES = ("d0", "d1", "d2")
item = st.tuples(
    st.sampled_from(DEVICES),
    st.sampled_from([0, 1, 5, 20, 31, 90, 130]),  # seconds since the previous message
    st.sampled_from(["telemetry", "telemetry", "heartbeat", "fix", "startup"]),
    st.sampled_from([0, 0, 0, 15, 40]),  # how late the device's clock is
    st.sampled_from(["Sensor", "Thermostat"]),
    st.integers(0, 3),  # value, and place of a fix
    st.booleans(),  # cut the log after this message
)


def build_log(
    items: list[tuple[str, int, str, int, str, int, bool]],
) -> tuple[list[DeviceMessage], list[bool]]:
    now = 0
    messages: list[DeviceMessage] = []
    for device, gap, kind, late, device_type, v, _ in items:
        now += gap
        ts = now - late
        if kind == "startup":
            m = DeviceMessage(device, at(ts), "startup", device_type, [], received_at=at(now))
        elif kind == "fix":
            m = message(device, ts, "telemetry", device_type, now, latitude=float(v), longitude=1.0, t=v)
        elif kind == "heartbeat":
            m = message(device, ts, "heartbeat", device_type, now, cpu_usage=float(v), mem_usage=2.0)
        else:
            m = message(device, ts, "telemetry", device_type, now, t=float(v), h=float(-v))
        messages.append(m)
    return messages, [cut for *_, cut in items]


def cut(messages: list[DeviceMessage], cuts: list[bool]) -> list[Batch]:
    """Batches as the bus could form them: a batch's rows come before its bare messages in the log."""
    log = Log()
    out: list[Batch] = []
    current: list[DeviceMessage] = []
    for i, m in enumerate(messages):
        current.append(m)
        follows_bare = i + 1 < len(messages) and not m.readings and messages[i + 1].readings
        if cuts[i] or follows_bare or i + 1 == len(messages):
            out.append(log.batch(*current))
            current = []
    return out


def twins_of(proc: TwinProcessor) -> dict[str, DeviceTwin]:
    return {t.device_id: t for t in proc.twins()}


@settings(max_examples=200, deadline=None)
@given(st.lists(item, min_size=1, max_size=40), st.lists(st.booleans(), min_size=40, max_size=40))
def test_batch_cuts_change_nothing_and_replay_rebuilds_every_twin(
    items: list[tuple[str, int, str, int, str, int, bool]], other_cuts: list[bool]
) -> None:
    messages, cuts = build_log(items)
    fine = TwinProcessor(SETTINGS)
    fine_batches = cut(messages, [True] * len(messages))
    fine_events = run(fine, fine_batches)
    for chosen in (cuts, other_cuts[: len(messages)], [False] * len(messages)):
        proc = TwinProcessor(SETTINGS)
        assert [e.as_dict() for e in run(proc, cut(messages, chosen))] == [e.as_dict() for e in fine_events]
        assert twins_of(proc) == twins_of(fine)
    # Every device's twin is its events folded over its stored rows.
    for device, twin in twins_of(fine).items():
        events = [e for e in fine_events if e.device_id == device]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert DeviceTwin.replay(device, events, stored_rows(fine_batches, device)) == twin


@settings(max_examples=100, deadline=None)
@given(st.lists(item, min_size=2, max_size=40), st.integers(1, 39))
def test_snapshot_restore_then_continue_equals_an_uninterrupted_run(
    items: list[tuple[str, int, str, int, str, int, bool]], split: int
) -> None:
    messages, cuts = build_log(items)
    batches = cut(messages, cuts)
    split = min(split, len(batches))
    whole = TwinProcessor(SETTINGS)
    expected = run(whole, batches)

    first = TwinProcessor(SETTINGS)
    before = run(first, batches[:split])
    state = json.loads(json.dumps(first.snapshot()))
    stored = [DeviceTwin.from_state(json.loads(json.dumps(t.to_state()))) for t in first.take_dirty()]
    resumed = TwinProcessor.restore(SETTINGS, state, stored)
    after = run(resumed, batches[split:])
    assert [e.as_dict() for e in before + after] == [e.as_dict() for e in expected]
    assert twins_of(resumed) == twins_of(whole)
    assert resumed.partition_time == whole.partition_time


def test_restore_waits_for_the_first_timer_call_and_asks_for_lost_twins() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    run(proc, [log.batch(message("a", 0, t=1.0), message("b", 0, t=1.0))])
    state = proc.snapshot()
    assert (state["resident"], state["absent"], state["partition_time"]) == (["a", "b"], [], at(0))
    stored = [t for t in proc.twins() if t.device_id == "a"]
    resumed = TwinProcessor.restore(SETTINGS, state, stored)
    assert resumed.missing(["a", "b"]) == {"b"}
    assert resumed.on_timer(at(1000)) == ([], [])  # only notes the time
    events, _ = resumed.on_timer(at(1011))
    assert kinds(events) == [
        ("a", 3, "status_changed", 30.0, {"from": "online", "to": "idle"}),
        ("a", 4, "status_changed", 120.0, {"from": "idle", "to": "offline"}),
    ]


def test_a_twin_offline_at_the_checkpoint_still_leaves_memory_after_restore() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    run(proc, [log.batch(message("a", 0, t=1.0)), log.batch(message("b", 200, t=1.0))])
    a = proc.get("a")
    assert a is not None
    assert a.status == "offline"
    resumed = TwinProcessor.restore(SETTINGS, proc.snapshot(), list(proc.twins()))
    resumed.on_timer(at(200))
    events, evicted = resumed.on_timer(at(601))
    assert [e.device_id for e in events] == ["b", "b"]
    assert [t.device_id for t in evicted] == ["a"]
    assert resumed.missing(["a", "b"]) == {"a"}


def test_twin_and_event_views_are_builtins_and_round_trip() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    events = run(proc, [log.batch(message("t", 1, "heartbeat", latitude=1.5, longitude=2.5))])
    twin = proc.get("t")
    assert twin is not None
    assert DeviceTwin.from_state(json.loads(json.dumps(twin.to_state()))) == twin
    assert [DeviceEvent.from_dict(json.loads(json.dumps(e.as_dict()))) for e in events] == events
    view = json.loads(json.dumps(twin.as_dict()))
    assert view["location"] == {"lat": 1.5, "lon": 2.5, "ts": at(1)}
    assert view["sensors"]["latitude"] == {"value": 1.5, "ts": at(1)}
    assert (view["status"], view["version"], view["heartbeat"]["ts"]) == ("online", 4, at(1))


def test_replay_takes_stored_rows_as_a_batch_and_events_already_applied_change_nothing() -> None:
    log, proc = Log(), TwinProcessor(SETTINGS)
    batches = [
        log.batch(message("a", 1, t=1.0, h=2.0), message("a", 2, t=3.0)),
        log.batch(message("a", 3, t=4.0)),
    ]
    events = run(proc, batches)
    stored = Batch.from_messages(m for b in batches for m in b.messages())
    stored.seq = [s for b in batches for s in b.seq]
    twin = DeviceTwin.replay("a", events + events[:1], stored)
    assert twin == proc.get("a")
    assert (twin.messages, twin.readings, twin.version, twin.position) == (3, 4, 2, 4)
