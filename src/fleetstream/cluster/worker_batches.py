"""A worker's batches and timers: process and store each Kafka batch in one transaction, tick.

:class:`WorkerBatches` holds the steps of :class:`~fleetstream.cluster.worker.Worker` that
change its partitions' state: per partition, skip what its checkpoint already holds,
deduplicate and process the rest, then store readings, derived rows and checkpoints in one
transaction (rewinding the batch and restoring the partitions when that fails); and every
second let the wall clock act on every partition and store what that emitted the same way.
Joining the group, rebalances and restoring partitions are in :mod:`~fleetstream.cluster.worker`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from fleetstream.adapters.bus.codec import Pack
from fleetstream.adapters.bus.kafka_subscription import KafkaBatch
from fleetstream.adapters.store.postgres import Connection, PostgresStore
from fleetstream.cluster.fleet import tag_partials
from fleetstream.cluster.live import LivePublisher
from fleetstream.cluster.outage import OutageLog
from fleetstream.cluster.partitions import PartitionCheckpoint, PartitionStore, partition_batch
from fleetstream.cluster.risks import write_risks
from fleetstream.cluster.stored_bound import NOTHING, BoundedKeyStore, PartitionBounds, newest_time
from fleetstream.cluster.worker_models import WorkerModels
from fleetstream.cluster.worker_rules import WorkerRules
from fleetstream.config import Settings
from fleetstream.domain.batch import Batch
from fleetstream.domain.clock import Clock
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import DedupKey
from fleetstream.domain.windows import ALL_DEVICES
from fleetstream.engine.dedup_stage import deduplicate
from fleetstream.engine.processors import StreamProcessors
from fleetstream.errors import StoreError
from fleetstream.ports import Derived

# The worker's logger, as before these steps had a module of their own.
log = logging.getLogger("fleetstream.cluster.worker")


class _Partition:
    """One assigned partition: its processors, the offset of the first record they have not seen and
    the newest event time it stored (:mod:`.stored_bound`)."""

    def __init__(
        self, number: int, processors: StreamProcessors, next_offset: int, stored_until: int = NOTHING
    ) -> None:
        self.number = number
        self.processors = processors
        self.next_offset = next_offset
        self.stored_until = stored_until


class WorkerBatches:
    """The batch and timer steps of :class:`~fleetstream.cluster.worker.Worker`."""

    settings: Settings
    clock: Clock
    store: PostgresStore
    worker_id: str
    dedup: Deduplicator
    checkpoints: PartitionStore
    partitions: dict[int, _Partition]
    live: LivePublisher
    writes: WorkerRules
    models: WorkerModels
    bounds: PartitionBounds
    batches_total: int
    readings_total: int
    skipped_total: int
    gaps_total: int
    lookups_spared_total: int
    _lock: asyncio.Lock
    _commits: set[asyncio.Task[None]]

    async def _restore(self, number: int) -> _Partition:
        raise NotImplementedError  # the worker's: a partition's processors from its checkpoint

    async def _restore_when_reachable(self, number: int) -> _Partition:
        raise NotImplementedError  # the worker's: _restore, waiting while the store is unreachable

    # -- batches ----------------------------------------------------------------------------

    async def _handle(self, taken: KafkaBatch) -> None:
        async with self._lock:
            stored = await self._process(taken)
        if stored is not None:
            # The offset commit waits for the broker; the next batch need not wait for it (the
            # checkpoint is stored: a commit lost to a crash only makes the next owner skip more).
            # Commits run in order (the subscription commits one at a time, in call order).
            commit = asyncio.create_task(taken.commit())
            self._commits.add(commit)
            commit.add_done_callback(self._commits.discard)
            self._announce(stored)

    def _announce(self, stored: Derived) -> None:
        """Publish stored device windows and events to the api instances (partial fleet windows
        are only meaningful merged, so they are not streamed)."""
        windows = [w for w in stored.windows if not w.device_id.startswith(ALL_DEVICES)]
        self.live.stored(windows, stored.events)
        self.writes.announce()

    async def _process(self, taken: KafkaBatch) -> Derived | None:
        """Process and store one Kafka batch: what it stored, or None (after rewinding it) if that failed."""
        pieces: dict[int, list[tuple[int, Pack]]] = defaultdict(list)
        ends: dict[int, int] = {}
        seen: dict[int, int] = {}
        for record in taken.records:
            part = self.partitions.get(record.partition)
            if part is None:
                continue  # revoked meanwhile: its new owner reads it again
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
            if record.offset < part.next_offset:
                self.skipped_total += 1  # stored and checkpointed before a worker died
                continue
            expected = seen.get(record.partition, part.next_offset)
            if record.offset != expected:
                self.gaps_total += 1  # records the checkpoint will claim but this worker never had
                log.error(
                    "worker %s: partition %d: offset %d handed out after %d",
                    self.worker_id,
                    record.partition,
                    record.offset,
                    expected,
                )
            seen[record.partition] = record.offset + 1
            if record.piece is not None:
                pieces[record.partition].append((record.offset, record.piece))
        now = self.clock.now_us()
        fresh_batches: list[Batch] = []
        remembered: list[DedupKey] = []
        derived = Derived()
        until: dict[int, int] = {}
        try:
            for number, items in pieces.items():
                part = self.partitions[number]
                keys_store = BoundedKeyStore(self.store, part.stored_until)
                duplicates = self.dedup.duplicates_total
                fresh, keys = await deduplicate(self.dedup, keys_store, partition_batch(number, items))
                self.lookups_spared_total += keys_store.spared
                until[number] = max(part.stored_until, newest_time(fresh))
                remembered += keys
                processors = self.partitions[number].processors
                # counted in the partition's state, checkpointed with this batch (a failure restores
                # the partition, so its counts too): the api sums the partitions' counts
                processors.duplicates_total += self.dedup.duplicates_total - duplicates
                processors.messages_total += fresh.messages_count
                missing = processors.missing(fresh)
                if missing:
                    processors.load(await self.store.load_twins(missing))
                out = processors.on_batch(fresh, now)
                out.windows = tag_partials(out.windows, number)
                derived.extend(out)
                self.writes.take(processors)
                fresh_batches.append(fresh)
            await self._store(fresh_batches, derived, ends, until=until)
        except Exception as exc:
            self.dedup.forget(remembered)
            self.writes.drop()
            log.error("worker %s: a batch of %d records failed: %s", self.worker_id, taken.record_count, exc)
            for number in ends:
                if number in self.partitions:
                    self.partitions[number] = await self._restore_when_reachable(number)
            await taken.fail(exc)
            return None
        self.batches_total += 1
        self.readings_total += sum(len(b) for b in fresh_batches)
        return derived

    async def _store(
        self,
        batches: Sequence[Batch],
        derived: Derived,
        ends: dict[int, int],
        then: Callable[[Connection], Awaitable[None]] | None = None,
        until: dict[int, int] | None = None,
    ) -> None:
        """The one transaction of a batch: readings, derived rows, checkpoints of ``ends``' partitions
        (and what ``then`` writes on the transaction's connection); ``until`` has the partitions'
        newest stored event times after it."""
        checkpoints = []
        scored = []
        for number, end in ends.items():
            part = self.partitions[number]
            derived.twins += part.processors.take_dirty()
            part.processors.twins.take_registered()
            scored += self.models.take(part.processors)
            end = max(end, part.next_offset)
            stored_until = max(part.stored_until, (until or {}).get(number, NOTHING))
            state = part.processors.snapshot()
            checkpoints.append(
                PartitionCheckpoint(
                    number, end, state, stored_until, self.bounds.partitions, part.next_offset
                )
            )

        async def also(con: Connection) -> None:
            await write_risks(con, scored)  # the risks the twins show (docs/prediction.md)
            if then is not None:
                await then(con)

        await self.checkpoints.commit(batches, derived, checkpoints, self.clock.now_us(), also)
        for cp in checkpoints:
            part = self.partitions[cp.partition]
            part.next_offset = cp.next_offset
            part.stored_until = cp.stored_until if cp.stored_until is not None else NOTHING

    # -- wall-clock timers --------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        outage = OutageLog(log, f"worker {self.worker_id}: timers")
        while True:
            await asyncio.sleep(self.settings.engine.flush_interval_s)
            self.live.stats({n: part.processors for n, part in self.partitions.items()})
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:  # PostgreSQL away: once in the log, not every second
                outage.failed(exc)
                continue
            except Exception:
                log.exception("worker %s: storing what the timers emitted failed; retrying", self.worker_id)
                continue
            outage.succeeded()

    async def tick(self) -> None:
        """Let the wall clock act on every partition (idle windows close, silent devices change
        status) and store what that emitted with the partitions' checkpoints."""
        async with self._lock:
            await self.models.reload(part.processors for part in self.partitions.values())
            now = self.clock.now_us()
            derived = Derived()
            touched: dict[int, int] = {}
            for number, part in self.partitions.items():
                out = part.processors.on_timer(now)
                out.windows = tag_partials(out.windows, number)
                self.writes.take(part.processors)
                if out:
                    derived.extend(out)
                    touched[number] = part.next_offset
            if not touched:
                return
            try:
                await self._store([], derived, touched)
            except Exception:
                self.writes.drop()
                for number in touched:  # their state moved past the store: back to the checkpoint
                    self.partitions[number] = await self._restore(number)
                raise
        self._announce(derived)
