"""The columnar batch and the vectorised live statistics, held to their object-at-a-time meaning."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fleetstream.domain.batch import Batch, concat
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.domain.stats import LiveStats, RunningStats


def telemetry(device: str, ts: int, **values: float) -> DeviceMessage:
    readings = [Reading(device, ts, s, v) for s, v in values.items()]
    return DeviceMessage(device, ts, "telemetry", "Sensor", readings)


def startup(device: str, ts: int) -> DeviceMessage:
    return DeviceMessage(device, ts, "startup", "Sensor", [])


def test_messages_come_back_whole_and_in_arrival_order() -> None:
    sent = [telemetry("a", 1, cpu=1.0, mem=2.0), startup("b", 2), telemetry("b", 3, t=4.0)]
    batch = Batch.from_messages(sent)
    assert (len(batch), batch.records, batch.messages_count) == (3, 4, 3)
    assert batch.messages() == sent
    assert batch.messages({"b"}) == sent[1:]


def test_concat_keeps_rows_events_and_order() -> None:
    first = Batch.from_messages([telemetry("a", 1, t=1.0), startup("a", 2)])
    second = Batch.from_messages([telemetry("b", 3, t=2.0, h=3.0)])
    joined = concat([first, second])
    assert joined.device_id == ["a", "b", "b"]
    assert joined.messages_count == 3
    assert [m.kind for m in joined.messages()] == ["telemetry", "startup", "telemetry"]


def test_take_keeps_the_chosen_rows() -> None:
    batch = Batch.from_messages([telemetry("a", 1, t=1.0, h=2.0), telemetry("b", 2, t=3.0)])
    part = batch.take([1, 2])
    assert (part.sensor, part.value, part.messages_count) == (["h", "t"], [2.0, 3.0], 2)


def test_dedup_keys_use_msg_id_when_given() -> None:
    batch = Batch.from_messages(
        [DeviceMessage("a", 5, "telemetry", "Sensor", [Reading("a", 5, "t", 1.0, msg_id="m1")], "m1")]
    )
    batch2 = Batch.from_messages([telemetry("a", 5, t=1.0)])
    assert concat([batch, batch2]).dedup_keys() == [("a", "t", "m1"), ("a", "t", 5)]


rows = st.lists(
    st.tuples(
        st.sampled_from(["d1", "d2", "d3"]),
        st.sampled_from(["t", "p"]),
        st.floats(-1e6, 1e6, allow_nan=False),
        st.integers(0, 50),
    ),
    min_size=1,
    max_size=60,
)


@given(st.lists(rows, min_size=1, max_size=5))
def test_vectorised_stats_equal_folding_one_value_at_a_time(
    batches: list[list[tuple[str, str, float, int]]],
) -> None:
    live = LiveStats()
    by_sensor: dict[str, RunningStats] = {}
    by_series: dict[tuple[str, str], RunningStats] = {}
    for batch in batches:
        live.add([r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch], [r[3] for r in batch])
        for device, sensor, value, ts in batch:
            by_sensor.setdefault(sensor, RunningStats()).add(value, ts)
            by_series.setdefault((device, sensor), RunningStats()).add(value, ts)
    everything = [r for b in batches for r in b]
    members = {
        "sensor": lambda key, r: r[1] == key,
        "series": lambda key, r: (r[0], r[1]) == key,
    }
    for kind, got, want in (("sensor", live.sensors, by_sensor), ("series", live.devices, by_series)):
        assert got.keys() == want.keys()
        for key, w in want.items():
            g = got[key]
            assert (g.count, g.min, g.max, g.last_ts) == (w.count, w.min, w.max, w.last_ts), key
            assert math.isclose(g.mean, w.mean, rel_tol=1e-9, abs_tol=1e-6)
            if w.stddev is not None:
                assert g.stddev is not None
                assert math.isclose(g.stddev, w.stddev, rel_tol=1e-6, abs_tol=1e-4)
            # the newest by event time; among ties, any of them
            mine = [r for r in everything if members[kind](key, r)]
            top = max(r[3] for r in mine)
            assert g.last in [r[2] for r in mine if r[3] == top]
    assert live.readings_total == sum(len(b) for b in batches)
    assert live.device_ids == {r[0] for b in batches for r in b}


def test_stats_stay_exact_far_from_zero() -> None:
    live = LiveStats()
    values = [1_000_000_000.0 + v for v in (0.1, 0.2, 0.3)]
    live.add(["a"] * 3, ["p"] * 3, values, [1, 2, 3])
    s = live.sensors["p"]
    assert s.stddev is not None
    assert math.isclose(s.stddev, float(np.std(values, ddof=1)), rel_tol=1e-6)


@given(st.lists(rows, min_size=1, max_size=5), st.integers(0, 5))
def test_live_stats_resume_from_a_checkpoint_as_if_never_stopped(
    batches: list[list[tuple[str, str, float, int]]], split: int
) -> None:
    def columns(batch: list[tuple[str, str, float, int]]) -> tuple[list[Any], ...]:
        return tuple([r[i] for r in batch] for i in range(4))

    whole = LiveStats()
    for batch in batches:
        whole.add(*columns(batch))
    first = LiveStats()
    for batch in batches[:split]:
        first.add(*columns(batch))
    resumed = LiveStats.from_state(json.loads(json.dumps(first.to_state())))
    for batch in batches[split:]:
        resumed.add(*columns(batch))
    # Series in order of first sight, whichever side of the checkpoint they were first seen on.
    first_seen = list(dict.fromkeys((r[0], r[1]) for batch in batches for r in batch))
    assert list(resumed.devices) == list(whole.devices) == first_seen
    assert repr(resumed.devices) == repr(whole.devices)  # repr: nan == nan
    assert repr(resumed.sensors) == repr(whole.sensors)
    assert (resumed.device_ids, resumed.readings_total) == (whole.device_ids, whole.readings_total)


def test_series_picks_devices_and_sensors_in_order_of_first_sight() -> None:
    live = LiveStats()
    live.add(["b", "a", "b"], ["t", "t", "h"], [1.0, 2.0, 3.0], [1, 1, 1])
    live.add(["c", "b", "a"], ["t", "t", "h"], [4.0, 5.0, 6.0], [2, 2, 2])
    assert list(live.series()) == [("b", "t"), ("a", "t"), ("b", "h"), ("c", "t"), ("a", "h")]
    chosen = live.series(["b", "c"], ["t"])
    assert {key: (s.count, s.mean, s.last) for key, s in chosen.items()} == {
        ("b", "t"): (2, 3.0, 5.0),
        ("c", "t"): (1, 4.0, 4.0),
    }
    assert list(live.series(sensors=["h"])) == [("b", "h"), ("a", "h")]
    assert live.series(["nobody"]) == {}
    assert live.device_ids == {"a", "b", "c"}
