"""The engine: consume the ``readings`` topic, make it durable, then feed the live processors.

For each batch taken from the bus::

    dedup (memory, then the store for keys older than the horizon)
      → store.write (one transaction: the durable point)
      → batch.commit (senders get their 2xx)
      → live stats, fan-out to live subscribers

A failed write fails the batch (senders get a 503 and may retry) and leaves
no trace in the dedup memory, so the retry is not mistaken for a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence

from fleetstream.config import EngineSettings
from fleetstream.domain.batch import Batch
from fleetstream.domain.clock import Clock
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import DedupKey
from fleetstream.domain.stats import LiveStats, RateMeter
from fleetstream.engine.fanout import Hub
from fleetstream.errors import FleetstreamError, StoreError
from fleetstream.ports import READINGS_TOPIC, Bus, BusBatch, Store

log = logging.getLogger(__name__)

ENGINE_GROUP = "fleetstream-engine"


class Engine:
    """Runs the processors of one process over the bus; see the module docstring."""

    def __init__(self, bus: Bus, store: Store, hub: Hub, clock: Clock, settings: EngineSettings) -> None:
        self.bus = bus
        self.store = store
        self.hub = hub
        self.clock = clock
        self.settings = settings
        self.dedup = Deduplicator(round(settings.dedup_horizon_s * 1_000_000))
        self.stats = LiveStats()
        self.rate = RateMeter()
        self.sensors_seen: set[str] = set()
        self.messages_total = 0
        self.failed_batches = 0
        self._seq = 0
        self._durable = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Restore the log position and the dedup memory from the store, then start consuming."""
        self._seq, newest = await self.store.log_position()
        self._durable = self._seq
        if newest is not None:
            recent = await self.store.recent_keys(newest - self.dedup.horizon_us)
            self.dedup.remember([key for key, _ in recent], [ts for _, ts in recent])
        self.sensors_seen = await self.store.sensors()
        batches = self.bus.subscribe(READINGS_TOPIC, ENGINE_GROUP, self.settings.batch_max_records)
        self._task = asyncio.create_task(self._run(batches), name="fleetstream-engine")
        log.info("engine started at log position %d, %d dedup keys in memory", self._seq, len(self.dedup))

    async def stop(self) -> None:
        """Finish what the bus already holds, then stop (call after the bus is closed)."""
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 30)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self.hub.close()

    @property
    def position(self) -> int:
        """Ingest sequence number of the last durable message."""
        return self._durable

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
            self._after_commit(fresh)
            return False
        await taken.commit()
        self._after_commit(fresh)
        return True

    async def _fail(self, taken: BusBatch, exc: BaseException) -> None:
        self.failed_batches += 1
        log.error("storing a batch of %d records failed: %s", taken.batch.records, exc)
        error = exc if isinstance(exc, FleetstreamError) else StoreError(f"storing failed: {exc}")
        await taken.fail(error)

    async def _deduplicate(self, batch: Batch) -> tuple[Batch, Sequence[DedupKey]]:
        """The rows and events not seen before, and the keys this added to the dedup memory."""
        keys = batch.dedup_keys()
        ts: list[int] = batch.ts
        if batch.events:
            keys += [e.dedup_key for e in batch.events]
            ts = ts + [e.ts for e in batch.events]
        fresh, unknown = self.dedup.classify(keys, ts)
        if fresh is None:
            return batch, keys
        remembered = [keys[i] for i in fresh]
        keep = bytearray(len(keys))
        for i in fresh:
            keep[i] = 1
        if unknown:
            try:
                older = {keys[i]: (keys[i], ts[i]) for i in unknown}  # also drops repeats inside the batch
                stored = await self.store.stored_keys(list(older.values()))
            except Exception:
                self.dedup.forget(remembered)
                raise
            self.dedup.duplicates_total += len(unknown) - len(older) + len(stored)
            for i in unknown:
                key = keys[i]
                if key not in stored and older.pop(key, None) is not None:
                    keep[i] = 1
        rows = len(batch)
        out = batch.take([i for i in range(rows) if keep[i]])
        kept = [j for j in range(len(batch.events)) if keep[rows + j]]
        out.events = [batch.events[j] for j in kept]
        out.event_msg = [batch.event_msg[j] for j in kept]
        out.messages_count = len(set(out.msg)) + len(out.events)
        return out, remembered

    def _after_commit(self, batch: Batch) -> None:
        stats = self.stats
        known = stats.sensor_count
        stats.add(batch.device_id, batch.sensor, batch.value, batch.ts)
        if stats.sensor_count != known:
            self.sensors_seen.update(stats.sensor_names())
        self.messages_total += batch.messages_count
        self.rate.add(len(batch), self.clock.monotonic())
        self.hub.publish(batch)
