"""Event-time windows: each rule on its own, batch-cut independence, restore, and SQL as the referee."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import statistics
from collections import Counter
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetstream.domain.window_series import PairIndex
from fleetstream.domain.window_state import array_from_state, array_state
from fleetstream.domain.windows import (
    ALL_DEVICES,
    SNAPSHOT_FORMAT,
    LateReadings,
    WindowAggregate,
    WindowOutput,
    WindowProcessor,
    WindowSettings,
)

S = 1_000_000
T0 = 1_699_999_980 * S  # a whole minute since the epoch
Row = tuple[str, str, float, int, int, int]  # device_id, sensor, value, ts, received_at, seq
Key = tuple[str, str, int, int]  # sensor, device_id, size_us, start


def row(device: str, sensor: str, value: float, ts: int, received_at: int | None = None, seq: int = 0) -> Row:
    return (device, sensor, value, ts, ts + S // 10 if received_at is None else received_at, seq)


def feed(p: WindowProcessor, rows: list[Row], cuts: list[int] | tuple[int, ...] = ()) -> list[WindowOutput]:
    """Rows in log order, cut into batches before the given positions; now = the batch's last arrival."""
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    outputs = []
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        d, s, v, t, r, q = (list(c) for c in zip(*rows[a:b], strict=True))
        outputs.append(p.on_batch(d, s, v, t, r, q, now_us=max(r)))
    return outputs


def emitted(outputs: list[WindowOutput]) -> list[WindowAggregate]:
    return [w for out in outputs for w in out.windows]


def key(w: WindowAggregate) -> Key:
    return (w.sensor, w.device_id, w.size_us, w.start)


def final(outputs: list[WindowOutput]) -> dict[Key, WindowAggregate]:
    """The last version of every window; versions of one window must count 1, 2, 3..."""
    out: dict[Key, WindowAggregate] = {}
    for w in emitted(outputs):
        assert w.version == (out[key(w)].version + 1 if key(w) in out else 1)
        out[key(w)] = w
    return out


def late_rows(outputs: list[WindowOutput]) -> list[tuple[Any, ...]]:
    """Late rows: (device_id, sensor, ts, value, seq, received_at, size_us, window_start, late_by_us)."""
    return [r for out in outputs for r in zip(*dataclasses.astuple(out.late), strict=True)]


# ------------------------------------------------------------------------------- rule by rule


def test_a_window_opens_then_is_emitted_once_the_watermark_passes_its_end() -> None:
    p = WindowProcessor(WindowSettings())
    out = feed(
        p,
        [
            row("d1", "temp", 20.0, T0 + 1 * S),
            row("d1", "temp", 22.0, T0 + 3 * S),
            row("d1", "temp", 21.0, T0 + 2 * S),  # out of order: still first 20.0, last 22.0
            row("d2", "temp", 30.0, T0 + 4 * S),
        ],
    )
    assert emitted(out) == []
    assert p.watermark == T0 + 4 * S - 5 * S
    assert [(w.device_id, w.size_us, w.count, w.version) for w in p.open_windows()] == [
        ("*", 10 * S, 4, 0), ("d1", 10 * S, 3, 0), ("d2", 10 * S, 1, 0),
        ("*", 60 * S, 4, 0), ("d1", 60 * S, 3, 0), ("d2", 60 * S, 1, 0),
    ]  # fmt: skip

    out = feed(p, [row("d1", "temp", 25.0, T0 + 16 * S)])  # watermark T0 + 11 s: [T0, T0 + 10 s) is due
    windows = out[0].windows
    assert [(w.device_id, w.start, w.end, w.count, w.version) for w in windows] == [
        ("*", T0, T0 + 10 * S, 4, 1), ("d1", T0, T0 + 10 * S, 3, 1), ("d2", T0, T0 + 10 * S, 1, 1),
    ]  # fmt: skip
    fleet, d1, d2 = windows
    assert (d1.sum, d1.mean, d1.min, d1.max, d1.stddev) == (63.0, 21.0, 20.0, 22.0, 1.0)
    assert (d1.first, d1.first_ts, d1.last, d1.last_ts) == (20.0, T0 + S, 22.0, T0 + 3 * S)
    assert fleet.mean == pytest.approx(statistics.mean([20.0, 22.0, 21.0, 30.0]))
    assert fleet.stddev == pytest.approx(statistics.stdev([20.0, 22.0, 21.0, 30.0]))
    assert d2.stddev is None
    assert d1.quantile(0.5) == pytest.approx(21.0, rel=0.01)
    view = d1.as_dict()
    assert list(view) == [
        "sensor", "device_id", "size_s", "start", "end", "count", "sum", "mean", "min", "max",
        "stddev", "first", "last", "p50", "p95", "p99", "version",
    ]  # fmt: skip
    assert (view["size_s"], view["start"], view["end"], view["last"]) == (10, T0, T0 + 10 * S, 22.0)
    assert view["p99"] == pytest.approx(21.0, rel=0.01)  # the lower quantile: index floor(0.99 * 2) = 1
    assert json.loads(json.dumps(view)) == view


def test_a_reading_within_the_lateness_re_emits_its_window_as_a_new_version() -> None:
    p = WindowProcessor(WindowSettings())
    feed(
        p,
        [
            row("d1", "temp", 20.0, T0 + S),
            row("d2", "temp", 30.0, T0 + 2 * S),
            row("d1", "temp", 1.0, T0 + 16 * S),
        ],
    )
    out = feed(p, [row("d1", "temp", 26.0, T0 + 5 * S)])[0]  # watermark T0 + 11 s < end + 30 s
    assert len(out.late) == 0
    assert [(w.device_id, w.size_us, w.count, w.mean, w.version) for w in out.windows] == [
        ("*", 10 * S, 3, pytest.approx(76.0 / 3), 2),
        ("d1", 10 * S, 2, 23.0, 2),
    ]
    assert out.windows[1].last == 26.0


def test_too_late_readings_are_reported_per_size_and_counted_once() -> None:
    p = WindowProcessor(
        WindowSettings(sizes_us=(10 * S, 60 * S), out_of_orderness_us=0, allowed_lateness_us=5 * S)
    )
    feed(p, [row("d1", "temp", 1.0, T0 + S, T0 + S), row("d1", "temp", 2.0, T0 + 30 * S, T0 + 30 * S)])
    assert p.watermark == T0 + 30 * S

    # late for [T0, T0+10 s) (watermark 30 s >= 10 s + 5 s), on time for [T0, T0+60 s)
    out = feed(p, [row("d1", "temp", 7.0, T0 + 2 * S, T0 + 31 * S, seq=7)])[0]
    assert dataclasses.asdict(out.late) == {
        "device_id": ["d1"], "sensor": ["temp"], "ts": [T0 + 2 * S], "value": [7.0], "seq": [7],
        "received_at": [T0 + 31 * S], "size_us": [10 * S], "window_start": [T0], "late_by_us": [20 * S],
    }  # fmt: skip
    assert p.late_total == {"temp": 1}
    minute = [w for w in p.open_windows() if w.size_us == 60 * S and w.device_id == "d1"]
    assert [(w.count, w.sum) for w in minute] == [(3, 10.0)]

    # the boundary, [T0 + 20 s, T0 + 30 s): taken while the watermark is below end + lateness, late from there
    just_before = T0 + 35 * S - 1
    out = feed(
        p,
        [row("d1", "temp", 2.0, just_before, just_before), row("d1", "temp", 4.0, T0 + 25 * S, T0 + 35 * S)],
    )[0]
    assert len(out.late) == 0
    out = feed(
        p,
        [
            row("d1", "temp", 2.0, T0 + 35 * S, T0 + 35 * S),
            row("d1", "temp", 4.0, T0 + 26 * S, T0 + 35 * S, seq=8),
        ],
    )[0]
    assert list(zip(out.late.seq, out.late.late_by_us, strict=True)) == [(8, 5 * S)]
    assert p.late_total == {"temp": 2}

    feed(p, [row("d1", "temp", 3.0, T0 + 100 * S, T0 + 100 * S)])  # closes and drops the minute
    out = feed(p, [row("d1", "temp", 8.0, T0 + 3 * S, T0 + 101 * S, seq=9)])[0]
    assert list(zip(out.late.size_us, out.late.late_by_us, out.late.seq, strict=True)) == [
        (10 * S, 90 * S, 9),
        (60 * S, 40 * S, 9),
    ]
    assert p.late_total == {"temp": 3}  # once per reading, not once per size


def test_an_idle_partition_closes_its_windows_on_the_wall_clock() -> None:
    p = WindowProcessor(WindowSettings())  # idle after 10 s, out of orderness 5 s
    now = T0 + 2 * S
    feed(p, [row("d1", "temp", 20.0, T0 + S, now)])
    assert p.on_timer(now + 5 * S).windows == []
    assert p.watermark == T0 + S - 5 * S
    assert p.on_timer(now + 10 * S).windows == []  # idle: the watermark follows the clock
    assert p.watermark == now + 5 * S
    out = p.on_timer(now + 20 * S)
    assert p.watermark == now + 15 * S
    assert [(w.device_id, w.size_us, w.version) for w in out.windows] == [("*", 10 * S, 1), ("d1", 10 * S, 1)]
    # a batch of old readings neither moves the watermark back nor is lost: a new version
    out2 = feed(p, [row("d1", "temp", 24.0, T0 + 3 * S, now + 21 * S)])[0]
    assert p.watermark == now + 15 * S
    assert [(w.device_id, w.count, w.mean, w.version) for w in out2.windows] == [
        ("*", 2, 22.0, 2),
        ("d1", 2, 22.0, 2),
    ]


def test_a_new_or_restored_processor_starts_its_idle_clock_at_the_first_tick() -> None:
    p = WindowProcessor(WindowSettings())
    assert p.on_timer(T0).windows == []
    assert p.watermark is None
    assert p.on_timer(T0 + 10 * S).windows == []
    assert p.watermark == T0 + 5 * S

    q = WindowProcessor(WindowSettings())
    feed(q, [row("d1", "temp", 1.0, T0 + S, T0 + S)])
    restored = WindowProcessor.restore(WindowSettings(), q.snapshot())
    far = T0 + 3600 * S
    assert restored.on_timer(far).windows == []  # first tick after a restart: the idle clock starts
    assert restored.watermark == q.watermark
    assert [w.device_id for w in restored.on_timer(far + 10 * S).windows] == ["*", "d1", "*", "d1"]
    assert restored.open_windows() == []


def test_final_windows_leave_memory() -> None:
    p = WindowProcessor(WindowSettings())
    rows = [row("d1", "temp", float(i), T0 + i * S, seq=i) for i in range(600)]
    most = 0
    for start in range(0, 600, 7):
        feed(p, rows[start : start + 7])
        open_now = p.open_windows()
        most = max(most, len(open_now))
        assert p.snapshot()["windows"]["start"]["shape"] == [len(open_now)]
        assert all(w.end + 30 * S > (p.watermark or 0) for w in open_now)
    # per series: the 10 s windows of the last 45 s (lateness + out of orderness + size) and 2 or 3 minutes
    assert most <= 2 * (5 + 3)
    p.on_timer(T0 + 10_000 * S)
    p.on_timer(T0 + 20_000 * S)
    assert p.open_windows() == []
    assert p.snapshot()["windows"]["start"]["shape"] == [0]


def test_a_device_clock_running_ahead_cannot_drag_the_watermark() -> None:
    p = WindowProcessor(WindowSettings())  # max ahead 5 s, out of orderness 5 s
    out = feed(
        p,
        [
            row("fast", "temp", 1.0, T0 + 3600 * S, T0 + 10 * S),  # its clock says an hour later
            row("slow", "temp", 2.0, T0 + 9 * S, T0 + 10 * S),
        ],
    )
    assert p.watermark == T0 + 10 * S  # min(ts, received + 5 s) - 5 s
    assert len(out[0].late) == 0
    assert [(w.device_id, w.count) for w in out[0].windows] == [("*", 1), ("slow", 1)]
    assert [w.device_id for w in p.open_windows() if w.start == T0 + 3600 * S] == ["*", "fast", "*", "fast"]


def test_many_series_each_keep_their_own_windows() -> None:
    p = WindowProcessor(WindowSettings())
    rows = [row(f"dev-{i}", f"s{i % 7}", float(i), T0 + i * 1000, seq=i) for i in range(5000)]
    windows = final([*feed(p, rows, [1000, 1001, 3000]), p.on_timer(T0 + 3600 * S)])
    for i in range(5000):
        w = windows[(f"s{i % 7}", f"dev-{i}", 10 * S, T0)]
        assert (w.count, w.sum) == (1, float(i))
    assert [windows[(f"s{k}", ALL_DEVICES, 60 * S, T0)].count for k in range(7)] == [715] * 2 + [
        714
    ] * 5  # 5000 = 7 * 714 + 2


def test_ties_in_event_time_first_is_the_earlier_arrival_last_the_later() -> None:
    rows = [
        row("d1", "temp", 1.0, T0 + 2 * S),
        row("d1", "temp", 2.0, T0 + 2 * S),
        row("d1", "temp", 3.0, T0 + 5 * S),
        row("d1", "temp", 4.0, T0 + 5 * S),
        row("d1", "temp", 9.0, T0 + 60 * S),
    ]
    for cuts in [(), (1,), (2,), (3,), (1, 2, 3, 4)]:
        w = final(feed(WindowProcessor(WindowSettings()), rows, cuts))[("temp", "d1", 10 * S, T0)]
        assert (w.first, w.last) == (1.0, 4.0), cuts


def test_emission_order_is_end_size_sensor_device() -> None:
    p = WindowProcessor(WindowSettings())
    rows = [
        row(device, sensor, 1.0, T0 + offset * S)
        for offset in (12, 1)
        for sensor in ("b", "a")
        for device in ("z", "y")
    ]
    out = feed(p, [*rows, row("y", "a", 1.0, T0 + 90 * S)])
    got = [(w.end, w.size_us, w.sensor, w.device_id) for w in emitted(out)]
    expected = [
        (T0 + end * S, 10 * S, sensor, device)
        for end in (10, 20)
        for sensor in ("a", "b")
        for device in (ALL_DEVICES, "y", "z")
    ] + [(T0 + 60 * S, 60 * S, sensor, device) for sensor in ("a", "b") for device in (ALL_DEVICES, "y", "z")]
    assert got == expected


def test_bad_input_changes_nothing() -> None:
    p = WindowProcessor(WindowSettings())
    with pytest.raises(ValueError, match="same length"):
        p.on_batch(["d1"], ["t"], [1.0, 2.0], [T0], [T0], [1], T0)
    with pytest.raises(ValueError, match="finite"):
        p.on_batch(["d1"], ["t"], [math.nan], [T0], [T0], [1], T0)
    assert p.watermark is None
    assert p.open_windows() == []
    assert p.on_batch([], [], [], [], [], [], T0) == WindowOutput()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes_us": ()}, "positive integers"),
        ({"sizes_us": (0,)}, "positive integers"),
        ({"sizes_us": (60 * S, 10 * S)}, "smallest up"),
        ({"sizes_us": (10 * S, 10 * S)}, "smallest up"),
        ({"sizes_us": (10 * S, 25 * S)}, "multiples of the smallest"),
        ({"out_of_orderness_us": -1}, "out_of_orderness_us"),
        ({"allowed_lateness_us": -1}, "allowed_lateness_us"),
        ({"max_ahead_us": -1}, "max_ahead_us"),
        ({"idle_timeout_us": 0}, "idle_timeout_us"),
        ({"relative_accuracy": 1.0}, "relative_accuracy"),
        ({"relative_accuracy": 1e-7}, "relative_accuracy"),
    ],
)
def test_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowSettings(**kwargs)  # type: ignore[arg-type]


def test_partial_aggregates_merge_into_the_aggregate_of_all_readings() -> None:
    rng = random.Random(5)
    readings = [(T0 + rng.randrange(10 * S), 1013.25 + rng.uniform(-0.5, 0.5)) for _ in range(200)]
    whole = WindowAggregate("p", "d1", 10 * S, T0)
    left = WindowAggregate("p", "d1", 10 * S, T0)
    right = WindowAggregate("p", "d1", 10 * S, T0)
    for i, (ts, value) in enumerate(readings):
        whole.add(value, ts)
        (left if i % 3 else right).add(value, ts)
    left.merge(right)
    values = [v for _, v in readings]
    assert (left.count, left.min, left.max) == (200, min(values), max(values))
    assert left.sum == pytest.approx(math.fsum(values), rel=1e-14)
    assert left.mean == pytest.approx(statistics.fmean(values), rel=1e-14)
    assert left.stddev == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert left.stddev == pytest.approx(whole.stddev, rel=1e-9)
    first, last = min(readings, key=lambda r: r[0]), max(readings, key=lambda r: r[0])
    assert (left.first_ts, left.first, left.last_ts, left.last) == (first[0], first[1], last[0], last[1])
    assert left.sketch == whole.sketch
    assert WindowAggregate.from_state(json.loads(json.dumps(left.to_state()))) == left
    with pytest.raises(ValueError, match="same window"):
        left.merge(WindowAggregate("p", "d2", 10 * S, T0))


def test_late_readings_extend_and_take() -> None:
    a = LateReadings(["d1"], ["t"], [1], [1.0], [5], [2], [10], [0], [3])
    b = LateReadings(["d2"], ["u"], [2], [2.0], [6], [3], [10], [0], [4])
    a.extend(b)
    assert len(a) == 2
    assert a.take([1]) == b


# ------------------------------------------------------------------- streams, cuts and restarts


def stream(seed: int, n: int = 400) -> list[Row]:
    """A few devices and sensors, event times jittered within the out of orderness, a few very late."""
    rng = random.Random(seed)
    arrival = T0 + rng.randrange(60) * S
    rows: list[Row] = []
    seen: set[tuple[str, str, int]] = set()
    for seq in range(n):
        arrival += rng.choice([0, S // 2, S, 2 * S])
        device, sensor = rng.choice(["d1", "d2", "d3"]), rng.choice(["temp", "load"])
        ts = arrival - rng.randrange(10) * S // 2
        if rng.random() < 0.05:
            ts -= rng.choice([40, 70, 100]) * S
        if (device, sensor, ts) in seen:  # no re-sent readings: dedup is done before windows
            continue
        seen.add((device, sensor, ts))
        rows.append((device, sensor, round(rng.uniform(-50, 50), 2), ts, arrival, seq))
    return rows


def untied(windows: dict[Key, WindowAggregate]) -> dict[Key, WindowAggregate]:
    return {k: dataclasses.replace(w, version=0) for k, w in windows.items()}


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 10**6),
    st.lists(st.integers(0, 400), max_size=12),
    st.lists(st.integers(0, 400), max_size=40),
)
def test_the_cut_into_batches_does_not_change_final_windows_or_late_rows(
    seed: int, cuts_a: list[int], cuts_b: list[int]
) -> None:
    rows = stream(seed)
    runs = []
    for cuts in (cuts_a, cuts_b):
        p = WindowProcessor(WindowSettings())
        outputs = feed(p, rows, cuts)
        outputs.append(p.on_timer(rows[-1][4] + 3600 * S))
        runs.append((untied(final(outputs)), late_rows(outputs), p.late_total))
    assert runs[0][0] == runs[1][0]  # bit for bit, sketches included
    assert runs[0][1:] == runs[1][1:]
    assert runs[0][1], "the stream should have late rows"


def through_msgpack(p: WindowProcessor) -> WindowProcessor:
    """A processor restored from ``p``'s snapshot as the engine stores it (msgpack: builtins only)."""
    return WindowProcessor.restore(p.settings, msgspec.msgpack.decode(msgspec.msgpack.encode(p.snapshot())))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restore_after_snapshot_gives_identical_output(seed: int) -> None:
    rows = stream(seed, 600)
    cuts = sorted(random.Random(seed).sample(range(1, len(rows)), 40))
    middle = cuts[len(cuts) // 2]
    whole = WindowProcessor(WindowSettings())
    expected = feed(whole, rows, cuts)
    first = WindowProcessor(WindowSettings())
    feed(first, rows[:middle], [c for c in cuts if c < middle])
    blob = msgspec.msgpack.encode(first.snapshot())  # fails on anything but builtins (numpy scalars, arrays)
    state = msgspec.msgpack.decode(blob)
    resumed = WindowProcessor.restore(WindowSettings(), state)
    assert msgspec.msgpack.encode(resumed.snapshot()) == blob  # nothing lost or reordered
    rest = feed(resumed, rows[middle:], [c - middle for c in cuts if c > middle])
    assert rest == expected[-len(rest) :]
    assert resumed.open_windows() == whole.open_windows()
    assert (resumed.watermark, resumed.late_total) == (whole.watermark, whole.late_total)
    with pytest.raises(ValueError, match="window sizes"):
        WindowProcessor.restore(WindowSettings(sizes_us=(5 * S,)), state)


def test_a_processor_restored_after_every_batch_emits_what_an_uninterrupted_one_does() -> None:
    rows = stream(4, 800)
    cuts = list(range(13, len(rows), 13))
    whole = WindowProcessor(WindowSettings())
    expected = feed(whole, rows, cuts)
    p = WindowProcessor(WindowSettings())
    got = []
    for a, b in itertools.pairwise([0, *cuts, len(rows)]):
        got += feed(p, rows[a:b])
        p = through_msgpack(p)  # slots freed by final windows and reused: the restored ones are renumbered
    assert got == expected
    assert late_rows(got), "the stream should have late rows"
    far = rows[-1][4] + 3600 * S
    assert p.on_timer(far).windows == []  # a restored processor's idle clock starts at its first tick
    last = p.on_timer(far + 3600 * S)
    assert last == whole.on_timer(far)
    assert last.windows
    assert p.open_windows() == whole.open_windows() == []


def test_a_restored_processor_finds_the_series_it_had() -> None:
    # Enough devices for the series' hash index to grow and collide while loading.
    devices = [f"dev-{i:05}" for i in range(3000)]
    rows = [row(d, s, float(i % 97), T0 + (i % 5) * S, seq=i) for i, (d, s) in enumerate(
        itertools.product(devices, ["temp", "load"]))]  # fmt: skip
    later = [row(d, "temp", 1.0, T0 + 8 * S, seq=7000 + i) for i, d in enumerate(["new", *devices[::-1]])]
    whole = WindowProcessor(WindowSettings())
    expected = feed(whole, rows + later, [len(rows)])
    p = WindowProcessor(WindowSettings())
    feed(p, rows)
    restored = through_msgpack(p)
    assert feed(restored, later) == expected[1:]
    windows = restored.open_windows()
    assert windows == whole.open_windows()
    assert len(windows) == 2 * (2 * len(devices) + 1 + 2)  # two sizes: every series once, "new" and the fleet
    assert Counter(w.count for w in windows if w.device_id == "dev-00001") == {2: 2, 1: 2}


def test_a_snapshot_of_another_format_is_refused() -> None:
    p = WindowProcessor(WindowSettings())
    feed(p, [row("d1", "temp", 1.0, T0)])
    state = p.snapshot()
    assert state["format"] == SNAPSHOT_FORMAT == 2
    for other in (1, 3, None):
        with pytest.raises(ValueError, match=f"window snapshot format {other!r} is not 2"):
            WindowProcessor.restore(WindowSettings(), {**state, "format": other})


def test_arrays_go_into_a_snapshot_as_raw_bytes_of_either_byte_order() -> None:
    values = np.array([1.5, -0.0, math.inf, 2.0**-1074])
    state = array_state(values)
    assert state == {"dtype": "<f8", "shape": [4], "data": values.astype("<f8").tobytes()}
    big = {"dtype": ">f8", "shape": [4], "data": values.astype(">f8").tobytes()}
    for s in (state, big):
        back = array_from_state(s, np.float64)
        assert back.dtype == np.float64
        assert back.flags.writeable
        assert back.tobytes() == values.tobytes()
    assert array_from_state(array_state(np.array([True, False])), np.bool_).tolist() == [True, False]
    with pytest.raises(ValueError, match="expected an array of int64, the snapshot has float64"):
        array_from_state(state, np.int64)
    with pytest.raises(ValueError, match="31 bytes cannot hold a float64 array of shape \\[4\\]"):
        array_from_state({**state, "data": state["data"][:-1]}, np.float64)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**40), unique=True, max_size=300), st.integers(0, 300), st.integers(1, 6))
def test_pair_index_finds_keys_put_one_by_one_or_at_once(keys: list[int], split: int, bits: int) -> None:
    index = PairIndex(bits=bits)
    for k in keys[:split]:
        index.put(k, k + 1)
    index.put_many(np.array(keys[split:], np.int64), np.array(keys[split:], np.int64) + 1)
    absent = [k + 2**41 for k in keys[:5]] + [2**41 - 1]
    found = index.get(np.array(keys + absent, np.int64)).tolist()
    assert found == [k + 1 for k in keys] + [-1] * len(absent)


# ------------------------------------------------------------------------- SQL as the referee

SQL = """
    WITH both_levels AS (
        SELECT device_id, sensor, value, ts, size_us FROM accepted
        UNION ALL
        SELECT ? AS device_id, sensor, value, ts, size_us FROM accepted
    )
    SELECT sensor, device_id, size_us,
           epoch_us(time_bucket(to_microseconds(size_us), make_timestamp(ts))) AS start,
           count(*), sum(value), min(value), max(value), avg(value), stddev_samp(value), list(value)
    FROM both_levels
    GROUP BY ALL
"""

reading = st.tuples(
    st.sampled_from(["d1", "d2", "d3"]),
    st.sampled_from(["temp", "load"]),
    st.integers(0, 4),  # seconds since the previous arrival
    st.integers(0, 9),  # half seconds the event time is behind the arrival (within the out of orderness)
    st.one_of(
        st.floats(-1e4, 1e4, allow_subnormal=False), st.floats(1012.75, 1013.75), st.sampled_from([0.0, -1.0])
    ),
    st.sampled_from([0] * 12 + [40, 75, 100]),  # now and then a reading much later than the rest
)


@settings(max_examples=50, deadline=None)
@given(st.lists(reading, min_size=1, max_size=80), st.lists(st.integers(0, 80), max_size=8))
def test_final_windows_match_sql_over_the_readings_not_reported_late(
    readings: list[tuple[str, str, int, int, float, int]], cuts: list[int]
) -> None:
    config = WindowSettings()
    rows: list[Row] = []
    arrival = T0
    seen = set()
    for seq, (device, sensor, gap, behind, value, very_late) in enumerate(readings):
        arrival += gap * S
        ts = arrival - behind * S // 2 - very_late * S
        if (device, sensor, ts) not in seen:
            seen.add((device, sensor, ts))
            rows.append((device, sensor, value, ts, arrival, seq))

    p = WindowProcessor(config)
    outputs = feed(p, rows, cuts)
    outputs.append(p.on_timer(arrival + 3600 * S))
    windows = final(outputs)
    assert p.open_windows() == []

    # which readings are too late, by the rule written out one reading at a time
    expected_late = set()
    newest = None
    for _, _, _, ts, received, seq in rows:
        for size in config.sizes_us:
            end = ts - ts % size + size
            if newest is not None and newest - config.out_of_orderness_us >= end + config.allowed_lateness_us:
                expected_late.add((seq, size))
        clamped = min(ts, received + config.max_ahead_us)
        newest = clamped if newest is None else max(newest, clamped)
    reported = {(r[4], r[6]) for r in late_rows(outputs)}
    assert reported == expected_late
    smallest = config.sizes_us[0]
    by_seq = {r[5]: r for r in rows}
    assert p.late_total == dict(Counter(by_seq[seq][1] for seq, size in reported if size == smallest))

    accepted = [(r, size) for r in rows for size in config.sizes_us if (r[5], size) not in reported]
    table = pa.table(
        {
            "device_id": pa.array([r[0] for r, _ in accepted], pa.string()),
            "sensor": pa.array([r[1] for r, _ in accepted], pa.string()),
            "value": pa.array([r[2] for r, _ in accepted], pa.float64()),
            "ts": pa.array([r[3] for r, _ in accepted], pa.int64()),
            "size_us": pa.array([size for _, size in accepted], pa.int64()),
        }
    )
    con = duckdb.connect()
    con.register("accepted", table)
    expected = {tuple(r[:4]): r[4:] for r in con.execute(SQL, [ALL_DEVICES]).fetchall()}
    con.close()

    assert set(windows) == set(expected)
    for k, (count, total, low, high, mean, stddev, values) in expected.items():
        w = windows[k]
        scale = max(abs(v) for v in values)
        assert (w.count, w.min, w.max) == (count, low, high)
        assert w.sum == pytest.approx(total, rel=1e-9, abs=1e-9 * scale * count)
        assert w.mean == pytest.approx(mean, rel=1e-9, abs=1e-9 * scale)
        if stddev is None:
            assert w.stddev is None
        else:
            assert w.stddev == pytest.approx(stddev, rel=1e-6, abs=1e-9 * scale)
        for q in (0.0, 0.5, 0.95, 0.99, 1.0):
            exact = float(np.quantile(np.array(values), q, method="lower"))
            answer = w.quantile(q)
            assert answer is not None
            if abs(exact) < 2.3e-308:  # the sketch counts the tiniest magnitudes as zero, as documented
                assert answer == 0.0
            else:
                assert abs(answer - exact) <= config.relative_accuracy * abs(exact) * (1 + 1e-9)
