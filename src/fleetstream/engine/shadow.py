"""Device shadow updates through the engine: between batches, durable before they return.

:meth:`ShadowUpdates.update_shadow` changes a twin outside the log. It takes the
lock batch processing also takes, so it runs between two batches and the twin's
event numbers stay in step with the events telemetry makes. It returns once the
twin is stored with the device events emitted so far, so a restart neither
replays the change away nor loses it: a replay starts from the stored twin and
skips what its position says it holds. A device first seen since the last
checkpoint has no stored twin a restart would start from (the replay would
register it afresh), so its update waits for a checkpoint instead. Updates that
arrive together share one write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fleetstream.domain.events import DESIRED_CHANGED
from fleetstream.domain.shadow import ShadowError, VersionMismatch
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.engine.signals import KeyedSignal
from fleetstream.errors import InvalidReading, NotFound, PreconditionFailed, StoreError

if TYPE_CHECKING:
    from fleetstream.domain.clock import Clock
    from fleetstream.engine.fanout import Channel
    from fleetstream.engine.processors import StreamProcessors
    from fleetstream.ports import Derived, Store

log = logging.getLogger(__name__)


class ShadowUpdates:
    """The shadow part of :class:`~fleetstream.engine.pipeline.Engine` (which provides the rest)."""

    processors: StreamProcessors
    store: Store
    clock: Clock
    events: Channel[DeviceEvent]
    _pending: Derived
    _twin_lock: asyncio.Lock
    _flush_lock: asyncio.Lock

    def _init_shadow(self) -> None:
        self._shadow_next: asyncio.Future[None] | None = None  # the write the next updates wait for
        self._shadow_twins: list[DeviceTwin] = []  # twins that write stores
        self._shadow_checkpoint_due = False  # one of them is new since the last checkpoint
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.desired_changed = KeyedSignal()  # device id → long-polls waiting for its desired state

    async def _flush_locked(self, *, checkpoint: bool, twins: Sequence[DeviceTwin] = ()) -> None:
        raise NotImplementedError  # the engine's: store what the processors emitted, and these twins

    async def update_shadow(
        self, device_id: str, section: str, patch: object, if_match: int | tuple[int, int] | None = None
    ) -> tuple[DeviceTwin, DeviceEvent | None]:
        """Merge-patch a device's ``desired`` or ``reported`` document; durable when it returns.

        Returns the twin and the event recorded (``None`` when the patch changed nothing).

        Raises:
            NotFound: The device has not sent anything yet.
            InvalidReading: The patch is not an object or is over the limits (see domain/shadow.py).
            PreconditionFailed: ``if_match`` is not the document's current version (an int), or not
                the twin's current (version, readings) (a pair: the twin's ETag).
            StoreError: The change could not be stored (it stays in memory and is stored later).
        """
        twins = self.processors.twins
        async with self._twin_lock:
            twin = twins.get(device_id)
            if twin is None and twins.missing([device_id]):
                twins.load(await self.store.load_twins([device_id]))
                twin = twins.get(device_id)
            if twin is None:
                msg = f"no device {device_id!r} has sent anything yet"
                raise NotFound(msg)
            if isinstance(if_match, tuple):
                now = (twin.version, twin.readings)
                if if_match != now:
                    msg = f"If-Match: the twin is at {now[0]}-{now[1]}, not {if_match[0]}-{if_match[1]}"
                    raise PreconditionFailed(msg, details={"etag": f'"{now[0]}-{now[1]}"'})
                if_match = None
            try:
                event = twins.update_shadow(device_id, section, patch, self.clock.now_us(), if_match)
            except ShadowError as exc:
                msg = f"{section}: {exc}"
                raise InvalidReading(msg) from exc
            except VersionMismatch as exc:
                msg = f"If-Match: {exc}"
                raise PreconditionFailed(
                    msg, details={"version": exc.current, "expected": exc.expected}
                ) from exc
            if event is not None:
                self._pending.events.append(event)
                self._shadow_twins.append(twin)
                if twins.registered_since(device_id):
                    self._shadow_checkpoint_due = True
        if event is not None:
            await self._shadow_write()
            self.events.publish([event])
            if event.type == DESIRED_CHANGED:
                self.desired_changed.notify(device_id)
        return twin, event

    async def _shadow_write(self) -> None:
        """Wait for a write that starts after now (one for all the updates made meanwhile)."""
        waiter = self._shadow_next
        if waiter is None:
            waiter = self._shadow_next = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._shadow_write_for(waiter))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        await asyncio.shield(waiter)

    async def _shadow_write_for(self, waiter: asyncio.Future[None]) -> None:
        async with self._flush_lock:
            self._shadow_next = None  # updates from here on need the next write
            twins, self._shadow_twins = self._shadow_twins, []
            checkpoint, self._shadow_checkpoint_due = self._shadow_checkpoint_due, False
            try:
                await self._flush_locked(checkpoint=checkpoint, twins=twins)
            except Exception as exc:
                log.exception("storing device shadow changes failed")
                self.processors.twins.mark_dirty(t.device_id for t in twins)
                waiter.set_exception(StoreError(f"storing the shadow change failed: {exc}"))
            else:
                waiter.set_result(None)
