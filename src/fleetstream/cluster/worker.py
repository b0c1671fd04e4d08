"""``fleetstream worker``: one member of the consumer group ``fleetstream-workers``.

Each assigned partition of the readings topic has processors of its own (dedup memory aside,
which is keyed by device and so shared). For every batch taken from Kafka::

    per partition: skip records below its checkpoint offset (already stored and processed)
      → dedup (memory, then the store) → processors (windows, twins, live stats, rules)
      → ONE transaction: new readings + derived rows + each touched partition's checkpoint
      → commit the Kafka offsets

A failed transaction drops the touched partitions' state (it has seen records the store has not),
restores it from their checkpoints and rewinds the batch. On a rebalance a lost partition's state
is dropped (its checkpoint is already stored with the last batch) and a gained one is restored
from its checkpoint (see :mod:`.partitions`). Every second each partition's wall-clock timers run
(idle windows close, silent devices change status) and what they emit is stored the same way.

Rule and zone changes, the alerts' announcements and webhooks, and the acknowledgements and
shadow updates the api sends for this worker's devices are handled in :mod:`.worker_rules`.
The failure predictor's model (the registry's newest round, reloaded) is in :mod:`.worker_models`;
each batch's re-scored risks are stored in its transaction (:mod:`.risks`).

Fleet-wide windows (device ``*``) of a partition are partial aggregates: they are stored under
the partition's own key and merged on read (:mod:`.fleet`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from fleetstream.adapters.bus.codec import Pack
from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.bus.kafka_subscription import KafkaBatch
from fleetstream.adapters.store.postgres import Connection, PostgresStore
from fleetstream.cluster.adapters import kafka_bus, postgres_store
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
from fleetstream.domain.clock import Clock, SystemClock
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import DedupKey
from fleetstream.domain.windows import ALL_DEVICES
from fleetstream.engine.dedup_stage import deduplicate
from fleetstream.engine.processors import StreamProcessors
from fleetstream.errors import StoreError
from fleetstream.ports import READINGS_TOPIC, Derived

log = logging.getLogger(__name__)

WORKER_GROUP = "fleetstream-workers"
RESTORE_RETRY_S = 0.5  # first wait for an unreachable store when restoring after a failed batch
RESTORE_RETRY_MAX_S = 10.0


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


class Worker:
    """Consumes its share of the readings topic into PostgreSQL; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: KafkaBus | None = None,
        store: PostgresStore | None = None,
        clock: Clock | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.bus: KafkaBus = bus or kafka_bus(settings)
        self.store: PostgresStore = store or postgres_store(settings)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stream = settings.stream
        self.dedup = Deduplicator(self.stream.dedup_horizon_us)
        self.checkpoints = PartitionStore(self.store, self.bus.topic_name(READINGS_TOPIC))
        self.partitions: dict[int, _Partition] = {}
        self.live = LivePublisher(self.bus, self.worker_id)
        self.writes = WorkerRules(self)  # rules, alerts, acknowledgements and shadow updates
        self.models = WorkerModels(self.store, settings.predictor, self.stream)  # failure prediction
        self.batches_total = 0
        self.readings_total = 0
        self.skipped_total = 0
        self.gaps_total = 0
        self.lookups_spared_total = 0  # keys below the dedup horizon known new without a store lookup
        self.bounds = PartitionBounds(self.bus, self.store, self.checkpoints.topic)
        self._lock = asyncio.Lock()  # batches, timers and rebalances change partitions one at a time
        self._task: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the store and the bus, read the rules, join the consumer group."""
        await self.store.start()
        await self.checkpoints.start()
        await self.models.start()
        await self.bus.start()
        await self.live.start()
        await self.writes.start()
        self._task = asyncio.create_task(self._run(), name="fleetstream-worker")
        self._timer = asyncio.create_task(self._tick_forever(), name="fleetstream-worker-timer")
        self.writes.run()
        log.info("worker %s started in group %r", self.worker_id, WORKER_GROUP)

    async def stop(self) -> None:
        """Leave the group (the partitions move to the other workers at once), then close."""
        await self.writes.stop()
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._commits:
            await asyncio.wait(self._commits, timeout=10)
        await self.bus.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 30)
            except TimeoutError:
                log.warning("worker %s: the consumer did not stop within 30 s", self.worker_id)
        self.live.close()
        await self.store.close()

    @property
    def running(self) -> bool:
        """Whether the consumer loop runs."""
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        batches = self.bus.subscribe(
            READINGS_TOPIC,
            WORKER_GROUP,
            self.settings.engine.batch_max_records,
            on_assign=self._assigned,
            on_revoke=self._revoked,
        )
        async for taken in batches:
            await self._handle(taken)

    # -- rebalances -------------------------------------------------------------------------

    async def _assigned(self, partitions: list[int]) -> None:
        async with self._lock:
            await self.bounds.rebalanced()
            for number in partitions:
                self.partitions[number] = await self._restore(number)
            self.bounds.settled()
            await self._remember_recent()
        log.info("worker %s: took partitions %s", self.worker_id, partitions)

    async def _revoked(self, partitions: list[int]) -> None:
        async with self._lock:
            for number in partitions:
                self.partitions.pop(number, None)  # its checkpoint was stored with its last batch
        log.info("worker %s: gave up partitions %s", self.worker_id, partitions)

    async def _restore(self, number: int) -> _Partition:
        processors = StreamProcessors(self.stream)
        self.writes.configure(processors)
        self.models.configure(processors)
        saved = await self.checkpoints.load(number)
        until = await self.bounds.restored(saved)
        if saved is None:
            return _Partition(number, processors, 0, until)
        resident = await self.store.load_twins(StreamProcessors.resident_ids(saved.state))
        processors.restore(saved.state, resident)
        log.info("worker %s: partition %d restored at offset %d", self.worker_id, number, saved.next_offset)
        return _Partition(number, processors, saved.next_offset, until)

    async def _restore_when_reachable(self, number: int) -> _Partition:
        """Restore a partition after a failed batch, waiting while the store is unreachable (the
        usual cause of the failure): raised from here, the error would end the consumer loop and
        leave this worker in the group processing nothing."""
        delay = RESTORE_RETRY_S
        while True:
            try:
                return await self._restore(number)
            except StoreError as exc:
                log.warning(
                    "worker %s: cannot restore partition %d yet, retrying in %.1f s: %s",
                    self.worker_id,
                    number,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTORE_RETRY_MAX_S)

    async def _remember_recent(self) -> None:
        """Load the dedup keys stored recently (by whichever worker): re-sends of them are dropped."""
        _, newest = await self.store.log_position()
        if newest is not None:
            recent = await self.store.recent_keys(newest - self.dedup.horizon_us)
            self.dedup.remember([key for key, _ in recent], [ts for _, ts in recent])

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
