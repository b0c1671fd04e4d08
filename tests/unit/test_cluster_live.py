"""Cluster mode: partial live stats merged across partitions, partial fleet windows merged on read."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from fleetstream.cluster.fleet import merge_partials, partial_key, tag_partials
from fleetstream.cluster.live import STATS_TOPIC, LivePublisher, LiveRelay, merge_late, merge_stats
from fleetstream.config import StreamSettings
from fleetstream.domain.clock import ManualClock
from fleetstream.domain.stats import LiveStats, RateMeter
from fleetstream.domain.windows import ALL_DEVICES, WindowAggregate
from fleetstream.engine.processors import StreamProcessors

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from fleetstream.adapters.bus.kafka import KafkaBus
    from fleetstream.engine.pipeline import Engine


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


class _Producer:
    """Stands in for the Kafka producer: keeps what is produced."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value))

    def poll(self, timeout: float) -> int:
        return 0


def test_late_counts_of_every_worker_reach_the_api() -> None:
    # Two workers, each with its partitions' windows processors; late readings counted there.
    workers: list[dict[int, StreamProcessors]] = [
        {0: StreamProcessors(StreamSettings()), 1: StreamProcessors(StreamSettings())},
        {2: StreamProcessors(StreamSettings())},
    ]
    workers[0][0].windows.late_total.update({"temperature": 3})
    workers[0][1].windows.late_total.update({"temperature": 4, "humidity": 1})
    workers[1][2].windows.late_total.update({"temperature": 5})
    workers[1][2].stats.add(["d"], ["temperature"], [1.0], [10])
    sent: list[tuple[str, bytes]] = []
    for n, partitions in enumerate(workers):
        publisher = LivePublisher(cast("KafkaBus", None), f"w{n}")
        producer = _Producer()
        publisher._producer = cast("Producer", producer)
        publisher.stats(partitions)
        sent += producer.sent
    api = _api()
    relay = LiveRelay(cast("KafkaBus", None), cast("Engine", api))

    for topic, value in sent:
        relay.deliver(topic, value)

    assert [t for t, _ in sent] == [STATS_TOPIC, STATS_TOPIC]
    assert api.processors.late_total == {"temperature": 12, "humidity": 1}  # what stats/live shows
    assert api.processors.stats.readings_total == 1
    assert merge_late([{"late_total": {"t": 2}}, {}]) == {"t": 2}  # a worker of an older version


def _api() -> SimpleNamespace:
    """The parts of an api's idle engine the relay sets."""
    return SimpleNamespace(
        processors=StreamProcessors(StreamSettings()),
        dedup=SimpleNamespace(duplicates_total=0),
        messages_total=0,
        rate=RateMeter(),
        clock=ManualClock(0),
    )


def _stats_of(worker: str, partitions: dict[int, StreamProcessors]) -> bytes:
    publisher = LivePublisher(cast("KafkaBus", None), worker)
    producer = _Producer()
    publisher._producer = cast("Producer", producer)
    publisher.stats(partitions)
    return producer.sent[0][1]


def test_duplicate_and_message_counts_of_every_partition_reach_the_api_and_survive_a_checkpoint() -> None:
    first, second = StreamProcessors(StreamSettings()), StreamProcessors(StreamSettings())
    first.duplicates_total, first.messages_total = 7, 40
    second.duplicates_total, second.messages_total = 2, 15
    api = _api()
    relay = LiveRelay(cast("KafkaBus", None), cast("Engine", api))
    relay.deliver(STATS_TOPIC, _stats_of("w0", {0: first}))
    relay.deliver(STATS_TOPIC, _stats_of("w1", {1: second}))
    assert (api.dedup.duplicates_total, api.messages_total) == (9, 55)

    # partition 1 moves to w0, restored from its checkpoint: counted once, where it was
    moved = StreamProcessors(StreamSettings())
    moved.restore(second.snapshot(), [])
    assert (moved.duplicates_total, moved.messages_total) == (2, 15)
    relay.deliver(STATS_TOPIC, _stats_of("w0", {0: first, 1: moved}))
    assert (api.dedup.duplicates_total, api.messages_total) == (9, 55)


def test_the_api_rate_counts_the_growth_of_the_stored_readings_not_those_stored_before() -> None:
    worker = StreamProcessors(StreamSettings())
    worker.stats.add(["d"] * 50, ["t"] * 50, [1.0] * 50, list(range(50)))
    api = _api()
    api.clock.advance(100.0)
    relay = LiveRelay(cast("KafkaBus", None), cast("Engine", api))
    relay.deliver(STATS_TOPIC, _stats_of("w0", {0: worker}))  # 50 stored before the api started
    worker.stats.add(["d"] * 20, ["t"] * 20, [1.0] * 20, list(range(50, 70)))
    api.clock.advance(0.5)
    relay.deliver(STATS_TOPIC, _stats_of("w0", {0: worker}))
    assert api.rate.rate(102.0) == 20 / 5  # a 5 s window of complete seconds
