"""A batch's path through the engine: dedup, the durable write, the acknowledgement, the processors.

:class:`BatchPath` holds the steps of :class:`~fleetstream.engine.pipeline.Engine` that take
each batch from the bus: deduplicate it, number its records, write it (several batches in
flight, acknowledged in order), fail it when the write fails, then feed it to the processors
and fan out what they emit. The engine's face is in :mod:`~fleetstream.engine.pipeline`,
which sets the state declared here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence

from fleetstream.config import EngineSettings
from fleetstream.domain.alerts import AlertChange
from fleetstream.domain.batch import Batch
from fleetstream.domain.clock import Clock
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import DedupKey
from fleetstream.domain.stats import LiveStats, RateMeter
from fleetstream.domain.twin import DeviceEvent
from fleetstream.domain.windows import WindowAggregate
from fleetstream.engine.dedup_stage import deduplicate
from fleetstream.engine.fanout import Channel, Hub
from fleetstream.engine.processors import StreamProcessors
from fleetstream.engine.rule_control import RuleControl
from fleetstream.errors import FleetstreamError, StoreError
from fleetstream.ports import BusBatch, Derived, Store

# The engine's logger, as before these steps had a module of their own.
log = logging.getLogger("fleetstream.engine.pipeline")


class BatchPath:
    """The per-batch steps of :class:`~fleetstream.engine.pipeline.Engine`."""

    store: Store
    hub: Hub
    clock: Clock
    settings: EngineSettings
    dedup: Deduplicator
    processors: StreamProcessors
    windows: Channel[WindowAggregate]
    events: Channel[DeviceEvent]
    alerts: Channel[AlertChange]
    rules: RuleControl
    rate: RateMeter
    sensors_seen: set[str]
    messages_total: int
    failed_batches: int
    _pending: Derived
    _seq: int
    _durable: int
    _twin_lock: asyncio.Lock

    @property
    def stats(self) -> LiveStats:
        """Running metrics of everything processed."""
        return self.processors.stats

    async def _run(self, batches: AsyncIterator[BusBatch]) -> None:
        # Several batches in flight: while one is written (DuckDB works on its own thread), the next
        # ones are taken and deduplicated on the loop. Writes run in order on the store's single
        # writer thread, and acknowledgements are given in the same order.
        previous: asyncio.Task[bool] | None = None
        in_flight: deque[asyncio.Task[bool]] = deque()
        async for taken in batches:
            try:
                fresh, remembered = await self._deduplicate(taken.batch)
            except Exception as exc:
                await self._fail(taken, exc)
                continue
            rows = len(fresh)
            fresh.seq = list(range(self._seq + 1, self._seq + 1 + rows))
            for i, event in enumerate(fresh.events, self._seq + 1 + rows):
                event.seq = i
            self._seq += fresh.records
            overlapped = previous is not None and not previous.done()
            previous = asyncio.create_task(self._store(taken, fresh, remembered, previous, overlapped))
            in_flight.append(previous)
            if len(in_flight) >= self.settings.writes_in_flight:
                await asyncio.wait([in_flight.popleft()])
        if in_flight:
            await asyncio.wait(in_flight)

    async def _store(
        self,
        taken: BusBatch,
        fresh: Batch,
        remembered: Sequence[DedupKey],
        previous: asyncio.Task[bool] | None,
        overlapped: bool,
    ) -> bool:
        """Write, then (after the previous batch) acknowledge; True when the senders got their ack.

        A batch deduplicated while the previous one was still being written may have dropped
        re-sends of that batch's readings; if that write failed, this batch's senders get the
        error too (its own readings stay stored and remembered), so their retry brings the dropped
        readings back.
        """
        try:
            if fresh.records:
                await self.store.write(fresh)
        except Exception as exc:
            self.dedup.forget(remembered)
            if previous is not None:
                await asyncio.wait([previous])
            await self._fail(taken, exc)
            return False
        previous_ok = True if previous is None else await previous
        if fresh.records:
            self._durable = max(self._durable, fresh.seq[-1] if not fresh.events else fresh.events[-1].seq)
        if overlapped and not previous_ok:
            msg = "an earlier batch failed to be stored; retry (what was stored is deduplicated)"
            await taken.fail(StoreError(msg))
            await self._after_commit(fresh)
            return False
        await taken.commit()
        await self._after_commit(fresh)
        return True

    async def _fail(self, taken: BusBatch, exc: BaseException) -> None:
        self.failed_batches += 1
        log.error("storing a batch of %d records failed: %s", taken.batch.records, exc)
        error = exc if isinstance(exc, FleetstreamError) else StoreError(f"storing failed: {exc}")
        await taken.fail(error)

    async def _deduplicate(self, batch: Batch) -> tuple[Batch, Sequence[DedupKey]]:
        """The rows and events not seen before, and the keys this added to the dedup memory."""
        return await deduplicate(self.dedup, self.store, batch)

    async def _after_commit(self, batch: Batch) -> None:
        known = self.stats.sensor_count
        await self._process(batch, live=True)
        if self.stats.sensor_count != known:
            self.sensors_seen.update(self.stats.sensor_names())
        self.messages_total += batch.messages_count
        self.rate.add(len(batch), self.clock.monotonic())
        self.hub.publish(batch)

    async def _process(self, batch: Batch, *, live: bool) -> None:
        """Feed a durable batch to the processors (loading evicted twins first) and keep their output."""
        async with self._twin_lock:
            missing = self.processors.missing(batch)
            if missing:
                self.processors.load(await self.store.load_twins(missing))
            self._take(self.processors.on_batch(batch, self.clock.now_us()), live=live)

    def _take(self, derived: Derived, *, live: bool) -> None:
        self._pending.extend(derived)
        changes = self.processors.alert_changes
        if changes:
            self.processors.alert_changes = []
        if live:
            if derived.windows:
                self.windows.publish(derived.windows)
            if derived.events:
                self.events.publish(derived.events)
            if changes:
                self.rules.announce(changes)
