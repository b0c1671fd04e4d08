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

This module holds the worker's face, its group membership and restoring partitions; processing
and storing batches and the timers are in :mod:`.worker_batches`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.cluster.adapters import kafka_bus, postgres_store
from fleetstream.cluster.live import LivePublisher
from fleetstream.cluster.partitions import PartitionStore
from fleetstream.cluster.stored_bound import PartitionBounds
from fleetstream.cluster.worker_batches import WorkerBatches, _Partition
from fleetstream.cluster.worker_models import WorkerModels
from fleetstream.cluster.worker_rules import WorkerRules
from fleetstream.config import Settings
from fleetstream.domain.clock import Clock, SystemClock
from fleetstream.domain.dedup import Deduplicator
from fleetstream.engine.processors import StreamProcessors
from fleetstream.errors import StoreError
from fleetstream.ports import READINGS_TOPIC

log = logging.getLogger(__name__)

WORKER_GROUP = "fleetstream-workers"
RESTORE_RETRY_S = 0.5  # first wait for an unreachable store when restoring after a failed batch
RESTORE_RETRY_MAX_S = 10.0


class Worker(WorkerBatches):
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
