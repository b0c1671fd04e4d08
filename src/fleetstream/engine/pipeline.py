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

This module holds the engine's face (construction, start, stop); a batch's steps are in
:mod:`fleetstream.engine.batch_path`, recovery and flushing in :mod:`fleetstream.engine.checkpoints`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fleetstream.config import EngineSettings, PredictorSettings, StreamSettings
from fleetstream.domain.alerts import AlertChange
from fleetstream.domain.clock import Clock
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.stats import RateMeter
from fleetstream.domain.twin import DeviceEvent
from fleetstream.domain.windows import WindowAggregate
from fleetstream.engine.checkpoints import Checkpoints
from fleetstream.engine.fanout import Channel, Hub
from fleetstream.engine.model_control import ModelControl
from fleetstream.engine.processors import StreamProcessors
from fleetstream.engine.rule_control import RuleControl
from fleetstream.engine.shadow import ShadowUpdates
from fleetstream.engine.webhooks import WebhookSender, WebhookSettings
from fleetstream.ports import READINGS_TOPIC, Bus, Derived, Store

log = logging.getLogger(__name__)

ENGINE_GROUP = "fleetstream-engine"


class Engine(Checkpoints, ShadowUpdates):
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
    def position(self) -> int:
        """Ingest sequence number of the last durable message."""
        return self._durable
