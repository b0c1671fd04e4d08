"""The engine's recovery and flushing: replay after a checkpoint, store what the processors emit.

:class:`Checkpoints` holds the steps of :class:`~fleetstream.engine.pipeline.Engine` that
keep its derived state durable: on start, restore the newest checkpoint and replay the log
after it; then, every ``flush_interval_s``, let the wall clock act and store the windows,
device events, alerts and twins emitted, with a checkpoint every ``checkpoint_interval_s``
(less often when taking one is slow). The engine's face is in :mod:`~fleetstream.engine.pipeline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from fleetstream.config import StreamSettings
from fleetstream.domain.twin import DeviceTwin
from fleetstream.engine.batch_path import BatchPath
from fleetstream.engine.model_control import ModelControl
from fleetstream.engine.processors import StreamProcessors
from fleetstream.engine.progress import replay_progress
from fleetstream.ports import Checkpoint, Derived

# The engine's logger, as before these steps had a module of their own.
log = logging.getLogger("fleetstream.engine.pipeline")


class Checkpoints(BatchPath):
    """The recovery and flushing steps of :class:`~fleetstream.engine.pipeline.Engine`."""

    stream: StreamSettings
    models: ModelControl
    replayed: int
    _last_checkpoint: float
    _checkpoint_every: float
    _twins_stored: float
    _flush_lock: asyncio.Lock

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
