"""One consumer of a Kafka bus topic in a consumer group, as an async iterator of batches.

Offsets are committed by hand, never automatically: :meth:`KafkaBatch.commit`
commits, per partition, the offset after the batch's last record, so a new
member of the group (after a crash, a restart or a rebalance) starts right
after what was committed and nothing committed is ever read again by the
group. :meth:`KafkaBatch.fail` commits nothing and rewinds the batch's
partitions, so its records come again (after ``fail_backoff_s``); until they
are committed, no later commit moves those partitions past them.

Group settings are :mod:`.kafka_group`'s (why, and the measured takeover of a dead member's
partitions). A broker that refuses the session timeout (Apache Kafka and Redpanda below their
``group.min.session.timeout.ms``) answers every JoinGroup with ``INVALID_SESSION_TIMEOUT``: the
consumer is then replaced by one with the next fallback timeout, with a warning in the log.

librdkafka's consumer blocks: ``consume`` runs in a worker thread and decodes
there; rebalance callbacks fire inside it and wait while the hooks run on the
event loop. The next fetch starts as soon as a batch is handed out, so it runs
while the consumer stores that batch; a rebalance hook it triggers waits for
the consumer's step to end, as the worker's hooks take its lock.

The consumer's state and its fetching (the worker thread's side) are in :mod:`.kafka_fetch`;
this module opens the consumer, hands out batches, commits, rewinds and follows rebalances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from fleetstream.adapters.bus.codec import join_packs
from fleetstream.adapters.bus.kafka_fetch import SubscriptionFetch, _Record
from fleetstream.adapters.bus.kafka_group import fallback_session_timeout
from fleetstream.adapters.bus.kafka_group import group_config as group_config  # its old home
from fleetstream.domain.batch import Batch
from fleetstream.ports import PartitionsHook

log = logging.getLogger(__name__)

_HOOK_TIMEOUT_S = 60.0  # a rebalance hook that takes longer is given up on (it keeps running)
# on a clean stop, how long the consumer stays open for batches handed out and not yet committed
_SETTLE_TIMEOUT_S = 10.0


class KafkaBatch:
    """Records of one or more partitions, handed to one consumer; see the module docstring."""

    def __init__(self, sub: Subscription, records: list[_Record]) -> None:
        self._sub = sub
        self.records = records  # (partition, offset, pack) each: per-partition consumers need them
        self._batch: Batch | None = None
        self.first: dict[int, int] = {}
        self.next: dict[int, int] = {}
        for r in records:
            self.first.setdefault(r.partition, r.offset)
            self.next[r.partition] = r.offset + 1
        # each partition's assignment when taken: a commit never crosses a revocation
        self.generation = {p: sub.generation.get(p, 0) for p in self.next}
        self._done = False
        sub.unsettled.add(self)

    @property
    def batch(self) -> Batch:
        """The records joined into one batch (on first use: a per-partition consumer needs not)."""
        if self._batch is None:
            self._batch = join_packs([r.piece for r in self.records if r.piece is not None])
        return self._batch

    @property
    def record_count(self) -> int:
        """Records in the batch, without joining them."""
        return sum(r.records for r in self.records)

    async def commit(self) -> None:
        if not self._done:
            self._done = True
            try:
                await self._sub.commit(self)
            finally:
                self._sub.unsettled.discard(self)

    async def fail(self, exc: BaseException) -> None:
        if not self._done:
            self._done = True
            log.warning(
                "Kafka bus: a batch of %d records failed (%s); it is taken again", self.record_count, exc
            )
            try:
                await self._sub.rewind(self)
            finally:
                self._sub.unsettled.discard(self)


class Subscription(SubscriptionFetch):
    """The state of one consumer: its assignment, records fetched and not yet handed out, commits."""

    async def batches(self) -> AsyncIterator[KafkaBatch]:
        self._loop = asyncio.get_running_loop()
        while not await self._ready():
            await asyncio.sleep(1.0)
        consumer = self._open()
        try:
            while not self.bus.closing:
                if self._refused is not None:
                    consumer = await self._fall_back(consumer, self._refused)
                if not self._buffer:
                    self._keep(await self._prefetched(consumer))
                    continue
                taken = self._take()
                if self._prefetch is None:
                    # the next fetch runs (in its thread) while the caller stores this batch
                    self._prefetch = asyncio.ensure_future(asyncio.to_thread(self._fetch, consumer))
                yield KafkaBatch(self, taken)
                if self._prefetch is not None and self._prefetch.done():
                    self._keep(await self._prefetched(consumer))
        finally:
            if self._prefetch is not None:
                with contextlib.suppress(Exception):
                    await self._prefetch
                self._prefetch = None
            if self.bus.closing:
                await self._settle()
            async with self._committing:  # no commit runs into the close ("Consumer closed")
                self._consumer = None
            # leaves the group now: the other members get its partitions without a timeout
            await asyncio.to_thread(self._close, consumer)

    async def _settle(self) -> None:
        """On a clean stop: wait (a while) for the batches handed out to be committed or failed.

        Their consumers commit after storing them, often on tasks of their own that run on after
        the last batch was taken; closing first would lose those commits (the next start reads
        the records again) and log each as failed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETTLE_TIMEOUT_S
        while self.unsettled and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.unsettled:
            log.warning(
                "Kafka bus: closing with %d batches neither committed nor failed: they are read again",
                len(self.unsettled),
            )

    def _open(self) -> Consumer:
        consumer = Consumer(self.config)
        self._consumer = consumer
        consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked)
        log.info(
            "Kafka bus: consuming %r in group %r (session timeout %d ms)",
            self.topic,
            self.config["group.id"],
            self.config["session.timeout.ms"],
        )
        return consumer

    async def _fall_back(self, consumer: Consumer, refused: int) -> Consumer:
        """After the broker refused the session timeout: a new consumer with the next fallback.

        The refused consumer never joined the group (every JoinGroup was refused), so it holds no
        partitions and closing it hands nothing over.
        """
        self._refused = None
        fallback = fallback_session_timeout(refused)
        if fallback is None or refused != self.config["session.timeout.ms"]:
            return consumer  # nothing longer to try (librdkafka keeps retrying), or already replaced
        log.warning(
            "Kafka bus: the broker refused session.timeout.ms=%d (below its "
            "group.min.session.timeout.ms); joining group %r with %d ms instead, so a dead "
            "member's partitions move after about %.0f s",
            refused,
            self.config["group.id"],
            fallback,
            fallback / 1000,
        )
        if self._prefetch is not None:
            with contextlib.suppress(Exception):
                await self._prefetch
            self._prefetch = None
        await asyncio.to_thread(self._close, consumer)
        self.config = {**self.config, "session.timeout.ms": fallback}
        return self._open()

    # -- commits -----------------------------------------------------------------------------

    async def commit(self, taken: KafkaBatch) -> None:
        offsets = []
        for partition, after in taken.next.items():
            if taken.generation[partition] != self.generation.get(partition, 0):
                continue  # revoked since the batch was taken
            floor = self.floor.get(partition)
            if floor is not None:
                if taken.first[partition] == floor:
                    del self.floor[partition]  # the failed records, taken again
                else:
                    after = min(after, floor)  # never past a failed record not committed yet
            if partition in self.assigned and after > self.committed.get(partition, -1):
                offsets.append(TopicPartition(self.topic, partition, after))
        consumer = self._consumer
        if not offsets or consumer is None:
            return
        async with self._committing:  # one at a time: a later commit never lands before an earlier one
            if self._consumer is not consumer:
                return  # closed meanwhile: the records are read again, deduplicated
            offsets = [
                tp
                for tp in offsets
                if tp.offset > self.committed.get(tp.partition, -1)
                and taken.generation[tp.partition] == self.generation.get(tp.partition, 0)
            ]
            if not offsets:
                return
            try:
                await asyncio.to_thread(consumer.commit, offsets=offsets, asynchronous=False)
            except (KafkaException, RuntimeError) as exc:
                # not fatal: the records are delivered again (to this member or another), deduplicated
                self.commit_failures += 1
                log.warning("Kafka bus: offset commit failed: %s", exc)
                return
            for tp in offsets:
                self.committed[tp.partition] = max(tp.offset, self.committed.get(tp.partition, -1))

    async def rewind(self, taken: KafkaBatch) -> None:
        consumer = self._consumer
        if self._prefetch is not None and consumer is not None:
            # no fetch may run across the seek: its records are kept (then dropped below) first
            self._keep(await self._prefetched(consumer))
        for partition, first in taken.first.items():
            self.floor[partition] = min(first, self.floor.get(partition, first))
            self._buffer = deque(r for r in self._buffer if r.partition != partition or r.offset < first)
            if consumer is None or partition not in self.assigned:
                continue  # its next owner reads from the committed offset
            self._rewound[partition] = first
            try:
                await asyncio.to_thread(consumer.seek, TopicPartition(self.topic, partition, first))
            except (KafkaException, RuntimeError) as exc:
                # the records come again after the next rebalance or restart (nothing past them is committed)
                self._rewound.pop(partition, None)
                log.warning("Kafka bus: rewinding partition %d failed: %s", partition, exc)
        await asyncio.sleep(self.bus.fail_backoff_s)

    # -- rebalances (called on the consume thread, inside consume or close) --------------------

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_loop(self._gain([tp.partition for tp in partitions]))

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_loop(self._lose([tp.partition for tp in partitions]))

    def _on_loop(self, step: Awaitable[None]) -> None:
        assert self._loop is not None

        async def run() -> None:
            await step

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(_HOOK_TIMEOUT_S)

    async def _gain(self, partitions: list[int]) -> None:
        self.assigned.update(partitions)
        for p in partitions:
            self._rewound.pop(p, None)
        log.info("Kafka bus: %r partitions assigned: %s", self.topic, sorted(partitions))
        await _call(self.on_assign, sorted(partitions))

    async def _lose(self, partitions: list[int]) -> None:
        gone = set(partitions)
        self.assigned -= gone
        for p in gone:
            self.generation[p] = self.generation.get(p, 0) + 1
            self.committed.pop(p, None)
            self.floor.pop(p, None)
            self._rewound.pop(p, None)
        # not handed out yet: the new owner reads them from the committed offset
        self._buffer = deque(r for r in self._buffer if r.partition not in gone)
        log.info("Kafka bus: %r partitions revoked: %s", self.topic, sorted(gone))
        await _call(self.on_revoke, sorted(gone))


async def _call(hook: PartitionsHook | None, partitions: list[int]) -> None:
    if hook is None:
        return
    result = hook(partitions)
    if result is not None:
        await result
