"""The engine: consume the ``readings`` topic, make it durable, then feed the stream processors.

For each batch taken from the bus::

    dedup (memory, then the store for keys older than the horizon)
      → store.write (one transaction: the durable point)
      → batch.commit (senders get their 2xx)
      → processors (live stats, windows, twins), in log order
      → fan-out to live subscribers (readings, emitted windows, device events)

A failed write fails the batch (senders get a 503 and may retry) and leaves
no trace in the dedup memory, so the retry is not mistaken for a duplicate.

What the processors emit is stored by a flusher every ``flush_interval_s``; every
``checkpoint_interval_s`` it also stores their state with the log position it
reflects. On start the engine restores that checkpoint and replays the log after
it before taking new traffic, so a crash loses no processor state (docs/stream.md).

Device shadow updates run between batches too (:mod:`fleetstream.engine.shadow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from fleetstream.config import EngineSettings, PredictorSettings, StreamSettings
from fleetstream.domain.alerts import AlertChange
from fleetstream.domain.batch import Batch
from fleetstream.domain.clock import Clock
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import DedupKey
from fleetstream.domain.stats import LiveStats, RateMeter
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import WindowAggregate
from fleetstream.engine.dedup_stage import deduplicate
from fleetstream.engine.fanout import Channel, Hub
from fleetstream.engine.model_control import ModelControl
from fleetstream.engine.processors import StreamProcessors
from fleetstream.engine.progress import replay_progress
from fleetstream.engine.rule_control import RuleControl
from fleetstream.engine.shadow import ShadowUpdates
from fleetstream.engine.webhooks import WebhookSender, WebhookSettings
from fleetstream.errors import FleetstreamError, StoreError
from fleetstream.ports import READINGS_TOPIC, Bus, BusBatch, Checkpoint, Derived, Store

log = logging.getLogger(__name__)

ENGINE_GROUP = "fleetstream-engine"


class Engine(ShadowUpdates):
    """Runs the processors of one process over the bus; see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        store: Store,
        hub: Hub,
        clock: Clock,
        settings: EngineSettings,
        stream: StreamSettings | None = None,
        predictor: PredictorSettings | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.hub = hub
        self.clock = clock
        self.settings = settings
        self.stream = stream or StreamSettings()
        self.dedup = Deduplicator(self.stream.dedup_horizon_us)
        self.processors = StreamProcessors(self.stream)
        self.windows: Channel[WindowAggregate] = Channel(clock.monotonic)
        self.events: Channel[DeviceEvent] = Channel(clock.monotonic)
        self.alerts: Channel[AlertChange] = Channel(clock.monotonic)
        self.webhooks = WebhookSender(
            WebhookSettings(attempts=settings.webhook_attempts, backoff_s=settings.webhook_backoff_s)
        )
        self.rules = RuleControl(self)
        self.models = ModelControl(self, predictor)
        self._pending = Derived()
        self._last_checkpoint = 0.0
        self._checkpoint_every = self.settings.checkpoint_interval_s
        self._twins_stored = float("-inf")
        self._flusher: asyncio.Task[None] | None = None
        self.replayed = 0
        self.rate = RateMeter()
        self.sensors_seen: set[str] = set()
        self.messages_total = 0
        self.failed_batches = 0
        self._seq = 0
        self._durable = 0
        self._task: asyncio.Task[None] | None = None
        self._twin_lock = asyncio.Lock()  # batches and shadow updates change twins one at a time
        self._flush_lock = asyncio.Lock()
        self._init_shadow()

    async def start(self) -> None:
        """Restore the log position and the dedup memory from the store, then start consuming."""
        self._seq, newest = await self.store.log_position()
        self._durable = self._seq
        if newest is not None:
            recent = await self.store.recent_keys(newest - self.dedup.horizon_us)
            self.dedup.remember([key for key, _ in recent], [ts for _, ts in recent])
        self.sensors_seen = await self.store.sensors()
        await self.rules.load()
        await self.models.load()
        await self._recover()
        await self.rules.after_recovery()
        await self.webhooks.start()
        batches = self.bus.subscribe(READINGS_TOPIC, ENGINE_GROUP, self.settings.batch_max_records)
        self._task = asyncio.create_task(self._run(batches), name="fleetstream-engine")
        self._flusher = asyncio.create_task(self._flush_forever(), name="fleetstream-flusher")
        log.info("engine started at log position %d, %d dedup keys in memory", self._seq, len(self.dedup))

    async def stop(self) -> None:
        """Finish what the bus already holds, store a checkpoint, then stop (call after the bus is closed)."""
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 30)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            try:
                await self._flush(checkpoint=True)
            except Exception:
                log.exception("storing the final checkpoint failed; the next start replays more of the log")
        await self.webhooks.stop()
        await self.models.stop()
        self.hub.close()
        self.windows.close()
        self.events.close()
        self.alerts.close()

    @property
    def stats(self) -> LiveStats:
        """Running metrics of everything processed."""
        return self.processors.stats

    # -- recovery and checkpoints ---------------------------------------------------

    async def _recover(self) -> None:
        """Restore the newest checkpoint, then replay the log after it (before any new traffic)."""
        saved = await self.store.checkpoint()
        if saved is not None:
            resident = await self.store.load_twins(StreamProcessors.resident_ids(saved.state))
            try:
                self.processors.restore(saved.state, resident)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring an unreadable checkpoint (%s): replaying the whole log", exc)
                self.processors = StreamProcessors(self.stream)
                self.rules.configure(self.processors)
                self.models.configure(self.processors)
        start = self.processors.position
        self.processors.rules.replaying = True
        started = self.clock.monotonic()
        told = started
        size = self.settings.batch_max_records
        # The next batch is read (on the store's thread) while this one is processed.
        ahead = asyncio.ensure_future(self.store.replay(start, size))
        try:
            while True:
                batch = await ahead
                if not batch.records:
                    break
                last = max(batch.seq[-1] if batch.seq else 0, batch.events[-1].seq if batch.events else 0)
                ahead = asyncio.ensure_future(self.store.replay(max(last, self.processors.position), size))
                await self._process(batch, live=False)
                self.replayed += batch.records
                if len(self._pending.windows) + len(self._pending.events) > 200_000:
                    await self._flush(checkpoint=False)
                now = self.clock.monotonic()
                if now - told >= 5:
                    told = now
                    position = self.processors.position
                    log.info("%s", replay_progress(self.replayed, position, start, self._seq, now - started))
        finally:
            if not ahead.done():
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead
        self.processors.rules.replaying = False
        if self.replayed:
            await self._flush(checkpoint=True)
            log.info(
                "replayed %d records (log positions %d to %d) in %.1f s",
                self.replayed,
                start + 1,
                self.processors.position,
                self.clock.monotonic() - started,
            )

    async def _flush_forever(self) -> None:
        interval = self.settings.flush_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
                await self.models.reload()
                due = self.clock.monotonic() - self._last_checkpoint >= self._checkpoint_every
                await self._flush(checkpoint=due)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storing windows, device events and twins failed; retrying")

    async def store_twins(self) -> None:
        """Store the twins changed since the last checkpoint now (listing reads stored twins).

        At most once a second; a twin stored ahead of the checkpoint is safe, since a replay
        skips what its stored position says it has seen.
        """
        now = self.clock.monotonic()
        if now - self._twins_stored < 1.0:
            return
        self._twins_stored = now
        changed = self.processors.take_dirty()
        if changed:
            try:
                await self.store.write_derived(Derived(twins=changed))
            except Exception:
                self.processors.twins.mark_dirty(t.device_id for t in changed)
                raise

    async def flush_alerts(self) -> None:
        """Store the alert changes not stored yet now (alert queries read the store)."""
        alerts, self._pending.alerts = self._pending.alerts, []
        if not alerts:
            return
        try:
            await self.store.write_derived(Derived(alerts=alerts))
        except Exception:
            self._pending.alerts = alerts + self._pending.alerts
            raise

    async def flush(self) -> None:
        """Store what the processors emitted and a checkpoint now (tests, shutdown)."""
        await self._flush(checkpoint=True)

    async def tick(self) -> None:
        """Let the wall clock act now, as the flusher does every second: idle windows close,
        silent devices change status (tests drive it with a manual clock)."""
        self._take(self.processors.on_timer(self.clock.now_us()), live=True)

    async def _flush(self, *, checkpoint: bool) -> None:
        """Store what the processors emitted (and, with ``checkpoint``, their state) in one transaction."""
        async with self._flush_lock:
            await self._flush_locked(checkpoint=checkpoint)

    async def _flush_locked(self, *, checkpoint: bool, twins: Sequence[DeviceTwin] = ()) -> None:
        """:meth:`_flush` under its lock; ``twins`` are stored too (a checkpoint stores all changed)."""
        pending, self._pending = self._pending, Derived()
        saved = None
        registered: set[str] = set()
        began = time.perf_counter()
        if checkpoint:
            pending.twins += self.processors.take_dirty()
            registered = self.processors.twins.take_registered()  # the checkpoint knows them now
            saved = Checkpoint(self.processors.position, self.processors.snapshot(), self.clock.now_us())
        else:
            pending.twins += twins
        if not pending and saved is None:
            return
        try:
            await self.store.write_derived(pending, saved)
        except Exception:
            pending.extend(self._pending)  # keep it for the next try, in order
            self._pending = pending
            self.processors.twins.put_back_registered(registered)
            raise
        if checkpoint:
            self._last_checkpoint = self.clock.monotonic()
            # Taking the snapshot holds the event loop and writing it holds the store's writer:
            # with a large state, checkpoint less often so that stays under 5% of the time (a crash
            # then replays a little more of the log).
            took = time.perf_counter() - began
            self._checkpoint_every = max(self.settings.checkpoint_interval_s, 20 * took)

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
