"""Dedup of a partition's backlog without asking PostgreSQL about keys it cannot hold.

Keys older than the dedup memory's horizon are looked up in the store. The memory is shared by
the partitions of a worker and trails the newest event time of any of them, so a partition behind
the others (a backlog taken over, a replay after a crash) has most of its keys below the horizon:
each batch would ask PostgreSQL about thousands of keys spanning minutes of event time, a scan of
that whole time range of the readings table.

A device is in one partition (DESIGN: the partition is the CRC-32 of the device id modulo the
partition count, which is not changed on a running fleet), and everything a partition stores goes
through its checkpointed transactions. So each partition keeps **stored until**: the newest event
time it ever stored (readings and device events), written with its checkpoint in the same
transaction. A reading keyed by its event time (no message id) newer than that cannot be stored;
only the others are looked up. A key with a message id is always looked up: a re-send may carry
another event time with the same id.

The bound is trusted only from a checkpoint written under the topic's current partition count;
otherwise (no checkpoint, an older schema, a recreated topic) the partition starts from the newest
event time in the whole store, which bounds every partition.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.cluster.partitions import PartitionCheckpoint
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DedupKey
from fleetstream.engine.dedup_stage import KeyStore

log = logging.getLogger(__name__)

NOTHING = -(1 << 63)
"""The bound of a partition that has stored nothing, in a store that holds nothing."""


class BoundedKeyStore:
    """A :class:`~fleetstream.engine.dedup_stage.KeyStore` that answers "not stored" itself for keys
    keyed by an event time newer than ``stored_until``, and asks ``store`` about the rest."""

    def __init__(self, store: KeyStore, stored_until: int) -> None:
        self.store = store
        self.stored_until = stored_until
        self.asked = 0
        self.spared = 0

    async def stored_keys(self, items: Sequence[tuple[DedupKey, int]]) -> set[DedupKey]:
        """Which of these (key, event time) are stored."""
        until = self.stored_until
        maybe = [(key, ts) for key, ts in items if ts <= until or isinstance(key[2], str)]
        self.asked += len(maybe)
        self.spared += len(items) - len(maybe)
        return await self.store.stored_keys(maybe) if maybe else set()


def newest_time(batch: Batch) -> int:
    """The newest event time of ``batch``'s readings and events (:data:`NOTHING` when empty)."""
    newest = max(batch.ts, default=NOTHING)
    return max(newest, max((e.ts for e in batch.events), default=NOTHING))


def checkpoint_bound(
    stored_until: int | None, written_under: int | None, partitions: int | None
) -> int | None:
    """A checkpoint's stored-until bound if it can be trusted: written under the topic's current
    partition count (so the partition holds the same devices). ``None``: use the store's newest."""
    if stored_until is None or partitions is None or written_under != partitions:
        return None
    return stored_until


class PartitionBounds:
    """Where a restored partition's bound comes from: its checkpoint, or the store's newest event time.

    :meth:`rebalanced` reads the topic's partition count (the checkpoints' bounds are trusted only
    under the count they were written with) and keeps the store's newest event time, a scan of
    the readings' times, for the partitions restored by that rebalance; :meth:`settled` ends it.
    """

    def __init__(self, bus: KafkaBus, store: PostgresStore, topic: str) -> None:
        self.bus = bus
        self.store = store
        self.topic = topic
        self.partitions: int | None = None
        self._newest: int | None = None
        self._keep = False

    async def rebalanced(self) -> None:
        """A rebalance starts: read the partition count again."""
        self._newest, self._keep = None, True
        try:
            self.partitions = await self.bus.partition_count(self.topic)
        except Exception as exc:  # then no checkpoint's bound is trusted
            log.warning(
                "the partition count of %r is unknown (%s): partitions bounded by the store", self.topic, exc
            )

    def settled(self) -> None:
        """The rebalance's partitions are restored: the store's newest event time moves on."""
        self._newest, self._keep = None, False

    async def restored(self, saved: PartitionCheckpoint | None) -> int:
        """The bound of a partition restored from ``saved`` (``None``: it has no checkpoint)."""
        if saved is not None:
            bound = checkpoint_bound(saved.stored_until, saved.partitions, self.partitions)
            if bound is not None:
                return bound
        newest = self._newest
        if newest is None:
            stored = (await self.store.log_position())[1]
            newest = NOTHING if stored is None else int(stored)
            if self._keep:
                self._newest = newest
        return newest
