"""Cluster mode: partial live stats merged across partitions, partial fleet windows merged on read."""

from __future__ import annotations

import random

import pytest

from fleetstream.cluster.fleet import merge_partials, partial_key, tag_partials
from fleetstream.cluster.live import merge_stats
from fleetstream.domain.stats import LiveStats
from fleetstream.domain.windows import ALL_DEVICES, WindowAggregate


def test_live_stats_of_partitions_merge_into_those_of_the_whole_fleet() -> None:
    rng = random.Random(3)
    rows = [
        (f"d-{d}", rng.choice(["t", "h"]), rng.uniform(-50, 500), rng.randrange(1000))
        for d in range(9)
        for _ in range(40)
    ]
    whole = LiveStats()
    parts = [LiveStats() for _ in range(3)]
    for device, sensor, value, ts in rows:
        whole.add([device], [sensor], [value], [ts])
        parts[int(device[2:]) % 3].add([device], [sensor], [value], [ts])  # a device in one partition

    merged = merge_stats([p.to_state() for p in parts])

    assert merged.readings_total == whole.readings_total == len(rows)
    assert merged.device_ids == whole.device_ids
    assert merged.devices == whole.devices
    for sensor, expected in whole.sensors.items():
        got = merged.sensors[sensor]
        assert (got.count, got.min, got.max, got.last_ts) == (
            expected.count,
            expected.min,
            expected.max,
            expected.last_ts,
        )
        assert got.mean == pytest.approx(expected.mean, rel=1e-12)
        assert got.stddev == pytest.approx(expected.stddev, rel=1e-9)


def test_partial_fleet_windows_merge_into_the_fleet_window() -> None:
    whole = WindowAggregate("t", ALL_DEVICES, 10, 0)
    partials = [WindowAggregate("t", ALL_DEVICES, 10, 0) for _ in range(2)]
    for i, value in enumerate([3.0, 9.0, 1.0, 7.0, 5.0]):
        whole.add(value, i)
        partials[i % 2].add(value, i)
    tagged = [w for p, part in enumerate(partials) for w in tag_partials([part], p)]
    assert [w.device_id for w in tagged] == [partial_key(0), partial_key(1)] == ["*0", "*1"]

    [merged] = merge_partials(tagged)

    assert merged.device_id == ALL_DEVICES
    assert (merged.count, merged.sum, merged.min, merged.max) == (5, 25.0, 1.0, 9.0)
    assert (merged.first, merged.last) == (3.0, 5.0)
    assert merged.quantile(0.5) == pytest.approx(whole.quantile(0.5), rel=0.01)
    assert partials[0].count == 3  # the stored partial is left as it was
