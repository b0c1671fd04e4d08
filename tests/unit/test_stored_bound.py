"""A partition's stored-until bound spares store lookups only for keys that cannot be stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fleetstream.cluster.stored_bound import NOTHING, BoundedKeyStore, checkpoint_bound, newest_time
from fleetstream.domain.batch import Batch
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import DedupKey, DeviceMessage, Reading
from fleetstream.engine.dedup_stage import deduplicate

S = 1_000_000


class Store:
    """Holds some keys; records what it was asked."""

    def __init__(self, stored: set[DedupKey]) -> None:
        self.stored = stored
        self.asked: list[DedupKey] = []

    async def stored_keys(self, items: Sequence[tuple[DedupKey, int]]) -> set[DedupKey]:
        self.asked += [key for key, _ in items]
        return {key for key, _ in items if key in self.stored}


def message(device: str, second: int, msg_id: str | None = None) -> DeviceMessage:
    return DeviceMessage(
        device, second * S, "telemetry", "Sensor", [Reading(device, second * S, "t", 1.0, msg_id=msg_id)]
    )


def test_only_keys_at_or_below_the_bound_or_with_a_message_id_are_looked_up() -> None:
    dedup = Deduplicator(horizon_us=10 * S)
    dedup.remember([("other", "t", 1000 * S)], [1000 * S])  # another partition is far ahead
    store = Store(stored={("d", "t", 100 * S), ("d", "t", "m-7")})
    batch = Batch.from_messages(
        [
            message("d", 100),  # stored: at the bound
            message("d", 90),  # below the bound, not stored
            message("d", 101),  # newer than anything the partition stored
            message("d", 500, msg_id="m-7"),  # a re-send with another event time: stored by its id
            message("d", 102),
        ]
    )
    keys = BoundedKeyStore(store, stored_until=100 * S)

    fresh, _ = asyncio.run(deduplicate(dedup, keys, batch))

    assert sorted(fresh.ts) == [90 * S, 101 * S, 102 * S]
    assert sorted(map(str, store.asked)) == sorted(
        map(str, [("d", "t", 100 * S), ("d", "t", 90 * S), ("d", "t", "m-7")])
    )
    assert (keys.asked, keys.spared) == (3, 2)


def test_a_partition_that_stored_nothing_asks_nothing_about_time_keys() -> None:
    dedup = Deduplicator(horizon_us=10 * S)
    dedup.remember([("other", "t", 1000 * S)], [1000 * S])
    store = Store(stored=set())
    batch = Batch.from_messages([message("d", s) for s in range(5)])

    fresh, _ = asyncio.run(deduplicate(dedup, BoundedKeyStore(store, NOTHING), batch))

    assert len(fresh) == 5
    assert store.asked == []


def test_the_newest_time_covers_readings_and_events() -> None:
    batch = Batch.from_messages([message("d", 3), DeviceMessage("d", 7 * S, "startup", "Host", [])])
    assert newest_time(batch) == 7 * S
    assert newest_time(Batch()) == NOTHING


def test_a_checkpoint_bound_is_trusted_only_under_the_partition_count_it_was_written_with() -> None:
    assert checkpoint_bound(5, 8, 8) == 5
    assert checkpoint_bound(5, 8, 12) is None  # the topic was recreated: devices moved
    assert checkpoint_bound(5, None, 8) is None  # written before the bound was kept
    assert checkpoint_bound(None, 8, 8) is None
    assert checkpoint_bound(5, 8, None) is None  # the count could not be read
