"""The Store contract for derived state and the log, over every adapter: idempotent writes (a replay
after a crash writes the same records again), checkpoints, twins, events, and replay in log order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetstream.domain.batch import Batch
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import LateReadings, WindowAggregate
from fleetstream.ports import Checkpoint, Derived, EventQuery, Store, WindowQuery

from .test_store_contract import ADAPTERS, DATA, S, call, msg


@pytest.fixture(params=list(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = ADAPTERS[request.param](tmp_path, request)
    asyncio.run(s.start())
    yield s
    asyncio.run(s.close())


def window(sensor: str, device: str, start_s: int, values: list[float], version: int) -> WindowAggregate:
    w = WindowAggregate(sensor, device, 10 * S, start_s * S)
    for i, v in enumerate(values):
        w.add(v, start_s * S + i)
    w.version = version
    return w


def late(rows: list[tuple[int, str, int]]) -> LateReadings:
    """Late readings of (log position, sensor, window size in s)."""
    out = LateReadings()
    for seq, sensor, size_s in rows:
        out.extend(
            LateReadings(["d"], [sensor], [seq * S], [1.5], [seq], [seq * S + 7], [size_s * S], [0], [9])
        )
    return out


def test_a_window_written_again_replaces_its_row(store: Store) -> None:
    first = window("t", "*", 0, [1.0, 2.0], 1)
    call(store.write_derived(Derived(windows=[first, window("h", "*", 0, [5.0], 1)])))
    # The same window again (a replay), then a late update, then a duplicate within one write.
    call(store.write_derived(Derived(windows=[window("t", "*", 0, [1.0, 2.0], 1)])))
    call(store.write_derived(Derived(windows=[window("t", "*", 0, [1.0, 2.0, 9.0], 2)])))
    call(
        store.write_derived(
            Derived(windows=[window("t", "*", 10, [3.0], 1), window("t", "*", 10, [3.0, 4.0], 2)])
        )
    )

    got = call(store.query_windows(WindowQuery(10 * S, 0, 100 * S)))

    assert [(w.sensor, w.start, w.version, w.count, w.sum) for w in got] == [
        ("h", 0, 1, 1, 5.0),
        ("t", 0, 2, 3, 12.0),
        ("t", 10 * S, 2, 2, 7.0),
    ]
    assert got[1].as_dict() == window("t", "*", 0, [1.0, 2.0, 9.0], 2).as_dict()


def test_windows_by_device_sensor_range_and_limit(store: Store) -> None:
    windows = [window(s, d, t, [float(t)], 1) for s in ("b", "a") for d in ("*", "x") for t in (0, 10, 20)]
    call(store.write_derived(Derived(windows=windows)))

    def keys(q: WindowQuery) -> list[tuple[str, str, int]]:
        return [(w.sensor, w.device_id, w.start // S) for w in call(store.query_windows(q))]

    assert keys(WindowQuery(10 * S, 10 * S, 30 * S)) == [
        ("a", "*", 10),
        ("b", "*", 10),
        ("a", "*", 20),
        ("b", "*", 20),
    ]
    assert keys(WindowQuery(10 * S, 0, 30 * S, ("b",), "x", limit=2)) == [("b", "x", 0), ("b", "x", 10)]
    assert keys(WindowQuery(60 * S, 0, 30 * S)) == []


def test_late_readings_are_counted_once_for_the_smallest_window(store: Store) -> None:
    rows = [(5, "t", 10), (5, "t", 60), (6, "t", 10), (7, "h", 10), (8, "h", 60)]
    call(store.write_derived(Derived(late=late(rows))))
    call(store.write_derived(Derived(late=late(rows[:3]))))  # replayed: not added again

    assert call(store.late_counts()) == {"h": 1, "t": 2}


def test_device_events_are_unique_per_device_and_sequence_number(store: Store) -> None:
    events = [
        DeviceEvent("d", 1, 10 * S, "registered", {"device_type": "Tracker"}, 1),
        DeviceEvent("d", 2, 20 * S, "status_changed", {"from": "offline", "to": "online"}, 2),
        DeviceEvent("d", 3, 30 * S, "message", {"kind": "startup", "n": [1, 2]}, 4),
        DeviceEvent("e", 1, 15 * S, "registered", {"device_type": "Sensor"}, 3),
    ]
    call(store.write_derived(Derived(events=events[:2])))
    call(store.write_derived(Derived(events=events)))  # the first two again, as a replay would

    assert call(store.device_events(EventQuery("d"))) == events[:3]
    assert call(store.device_events(EventQuery("d", after_seq=1, limit=1))) == events[1:2]
    assert call(store.device_events(EventQuery("d", 15 * S, 30 * S))) == events[1:2]
    assert call(store.device_events(EventQuery("d", types=("registered", "message")))) == [
        events[0],
        events[2],
    ]
    assert call(store.device_events(EventQuery("nobody"))) == []


def test_twins_replace_their_row_and_page_by_device_id(store: Store) -> None:
    twins = [
        DeviceTwin(
            "c", "Tracker", "online", 1 * S, 5 * S, {"t": (1.5, 5 * S)}, (52.1, 4.3, 5 * S), 3, 4, 2, 9
        ),
        DeviceTwin("a", "Sensor", "offline"),
        DeviceTwin("b", "tracker", "online", 2 * S, 3 * S, version=1, position=2),
    ]
    call(store.write_derived(Derived(twins=twins)))
    newer = DeviceTwin("a", "Sensor", "idle", 7 * S, 8 * S, version=5, position=11)
    call(store.write_derived(Derived(twins=[DeviceTwin("a", "Sensor", "online"), newer])))

    assert sorted(call(store.load_twins(["a", "c", "zz"])), key=lambda t: t.device_id) == [newer, twins[0]]
    assert call(store.load_twins([])) == []
    total, page = call(store.list_twins(None, None, 2, 0))
    assert (total, [t.device_id for t in page]) == (3, ["a", "b"])
    total, page = call(store.list_twins("TRACKER", "online", 10, 1))
    assert (total, [t.device_id for t in page]) == (2, ["c"])


def test_the_checkpoint_is_the_newest_written(store: Store) -> None:
    assert call(store.checkpoint()) is None
    call(store.write_derived(Derived(), Checkpoint(3, b"\x00state-1", 10 * S)))
    call(
        store.write_derived(
            Derived(windows=[window("t", "*", 0, [1.0], 1)]), Checkpoint(7, b"s2\xff", 11 * S)
        )
    )

    assert call(store.checkpoint()) == Checkpoint(7, b"s2\xff", 11 * S)


def _rows(batch: Batch) -> list[tuple[object, ...]]:
    return list(zip(batch.seq, batch.device_id, batch.ts, batch.sensor, batch.value, batch.kind, strict=True))


def test_replay_in_log_order_keeps_messages_whole(store: Store) -> None:
    data = [msg(1, "a", 10, {"t": 1.0, "h": 50.0}), msg(3, "a", 20, {"t": 3.0}), msg(4, "b", 5, {"t": 8.0})]
    call(store.write(Batch.from_messages([*data[:1], msg(6, "b", 30, {})])))
    call(store.write(Batch.from_messages(data[1:])))

    everything = call(store.replay(0, 100))
    assert [r[0] for r in _rows(everything)] == sorted(r[0] for r in _rows(everything))
    # (Rows of one message share its position: their order among themselves is not part of it.)
    got = [(r[1], r[2] // S, r[3]) for r in _rows(everything)]
    assert sorted(got[:2]) == [("a", 10, "h"), ("a", 10, "t")]
    assert got[2:] == [("a", 20, "t"), ("b", 5, "t")]
    assert [(m.device_id, m.kind, m.seq) for m in everything.events] == [("b", "startup", 6)]
    # One record asked for: the first message comes whole (both of its readings).
    head = call(store.replay(0, 1))
    assert sorted((r[1], r[3]) for r in _rows(head)) == [("a", "h"), ("a", "t")]
    assert head.events == []
    after = call(store.replay(max(head.seq), 100))
    assert [(r[1], r[2] // S) for r in _rows(after)] == [("a", 20), ("b", 5)]
    end = call(store.replay(10, 100))
    assert (len(end), end.events) == (0, [])


def test_device_rows_up_to_a_time(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))

    rows = call(store.device_rows("a", 15 * S))
    assert [(r[1], r[2] // S, r[3], r[4]) for r in _rows(rows)] == [("a", 10, "t", 1.0), ("a", 10, "h", 50.0)]
    bare = call(store.device_rows("b", 100 * S))
    assert [(r[1], r[3]) for r in _rows(bare)] == [("b", "t")]
    assert [(m.kind, m.ts) for m in bare.events] == [("startup", 30 * S)]
