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
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from fleetstream.config import EngineSettings
from fleetstream.domain.clock import Clock
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import DedupKey, DeviceMessage
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
            self.dedup.remember(await self.store.recent_keys(newest - self.dedup.horizon_us))
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
        # Two batches in flight: while one is written (DuckDB works on its own thread), the next is
        # taken and deduplicated on the loop. Writes run in order on the store's single writer
        # thread, and acknowledgements are given in the same order.
        previous: asyncio.Task[bool] | None = None
        async for batch in batches:
            remembered: list[DedupKey] = []
            try:
                fresh = await self._deduplicate(batch.records, remembered)
            except Exception as exc:
                self.dedup.forget(remembered)
                await self._fail(batch, exc)
                continue
            for message in fresh:
                self._seq += 1
                message.seq = self._seq
            overlapped = previous is not None and not previous.done()
            task = asyncio.create_task(self._store(batch, fresh, remembered, previous, overlapped))
            if previous is not None:
                await asyncio.wait([previous])
            previous = task
        if previous is not None:
            await asyncio.wait([previous])

    async def _store(
        self,
        batch: BusBatch,
        fresh: list[DeviceMessage],
        remembered: list[DedupKey],
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
            if fresh:
                await self.store.write(fresh)
        except Exception as exc:
            self.dedup.forget(remembered)
            if previous is not None:
                await asyncio.wait([previous])
            await self._fail(batch, exc)
            return False
        previous_ok = True if previous is None else await previous
        self._durable = max(self._durable, max((m.seq for m in fresh), default=0))
        if overlapped and not previous_ok:
            msg = "an earlier batch failed to be stored; retry (what was stored is deduplicated)"
            await batch.fail(StoreError(msg))
            self._after_commit(fresh)
            return False
        await batch.commit()
        self._after_commit(fresh)
        return True

    async def _fail(self, batch: BusBatch, exc: BaseException) -> None:
        self.failed_batches += 1
        log.error("storing a batch of %d messages failed: %s", len(batch.records), exc)
        error = exc if isinstance(exc, FleetstreamError) else StoreError(f"storing failed: {exc}")
        await batch.fail(error)

    async def _deduplicate(
        self, messages: Sequence[DeviceMessage], remembered: list[DedupKey]
    ) -> list[DeviceMessage]:
        """The messages (or parts of them) not seen before; ``remembered`` gets the keys added to memory."""
        items: list[tuple[DedupKey, int]] = []
        for m in messages:
            if m.readings:  # keys built inline (as Reading.dedup_key): this runs for every reading
                items += [
                    ((r.device_id, r.sensor, r.ts if r.msg_id is None else r.msg_id), r.ts)
                    for r in m.readings
                ]
            else:
                items.append((m.dedup_key, m.ts))
        fresh, unknown = self.dedup.classify(items)
        remembered.extend(items[i][0] for i in fresh)
        if len(fresh) == len(items):
            return list(messages)
        keep = bytearray(len(items))
        for i in fresh:
            keep[i] = 1
        if unknown:
            older = {items[i][0]: items[i] for i in unknown}  # also drops repeats inside the batch
            stored = await self.store.stored_keys(list(older.values()))
            self.dedup.duplicates_total += len(unknown) - len(older) + len(stored)
            for i in unknown:
                key = items[i][0]
                if key not in stored and older.pop(key, None) is not None:
                    keep[i] = 1
        out: list[DeviceMessage] = []
        i = 0
        for m in messages:
            if not m.readings:
                if keep[i]:
                    out.append(m)
                i += 1
                continue
            n = len(m.readings)
            flags = keep[i : i + n]
            if all(flags):
                out.append(m)
            elif any(flags):
                out.append(replace(m, readings=[r for r, k in zip(m.readings, flags, strict=True) if k]))
            i += n
        return out

    def _after_commit(self, messages: list[DeviceMessage]) -> None:
        readings = [r for m in messages for r in m.readings]
        self.stats.on_readings(readings)
        self.messages_total += len(messages)
        self.rate.add(len(readings), self.clock.monotonic())
        self.sensors_seen.update(self.stats.sensors)
        self.hub.publish(messages)
