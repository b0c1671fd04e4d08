"""Offset commits of the Kafka subscription never cross a revocation of the batch's partitions."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from confluent_kafka import TopicPartition

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.bus.kafka_subscription import KafkaBatch, Subscription, _Record


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[list[tuple[int, int]]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])


def _subscription() -> tuple[Subscription, _Consumer]:
    sub = Subscription(cast("KafkaBus", None), "readings", {}, 100, None, None)
    consumer = _Consumer()
    sub._consumer = cast("Any", consumer)
    return sub, consumer


def _batch(sub: Subscription, *offsets: tuple[int, int]) -> KafkaBatch:
    return KafkaBatch(sub, [_Record(partition, offset, None, 0) for partition, offset in offsets])


def test_a_batch_commits_the_offset_after_its_last_record_per_partition() -> None:
    async def scenario() -> list[list[tuple[int, int]]]:
        sub, consumer = _subscription()
        await sub._gain([0, 1])
        await _batch(sub, (0, 10), (0, 11), (1, 4)).commit()
        return consumer.commits

    assert asyncio.run(scenario()) == [[(0, 12), (1, 5)]]


def test_a_partition_revoked_after_the_batch_was_taken_is_not_committed_even_once_back() -> None:
    async def scenario() -> list[list[tuple[int, int]]]:
        sub, consumer = _subscription()
        await sub._gain([0, 1])
        taken = _batch(sub, (0, 10), (1, 4))
        await sub._lose([0])  # its consumer may have skipped partition 0's records meanwhile
        await sub._gain([0])
        await taken.commit()
        await _batch(sub, (0, 10)).commit()  # taken after the partition came back: committed
        return consumer.commits

    assert asyncio.run(scenario()) == [[(1, 5)], [(0, 11)]]
