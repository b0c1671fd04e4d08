"""Simulated devices follow their shadow: apply ``desired``, then report what they do.

The in-process simulator of ``fleetstream up`` watches the ``desired_changed``
events of its devices. Keys it understands:

- ``interval_s``: seconds between the device's messages (a number from
  :data:`MIN_INTERVAL_S` to :data:`MAX_INTERVAL_S`); the device's rate becomes
  ``1 / interval_s``, as with ``PATCH /api/v1/simulator/devices/{id}`` ``rate``
  (a host monitor's heartbeat and temperature periods scale the same way).
  Removing the key puts the device back on the fleet's rate.

Once applied the device reports ``reported.interval_s`` (the value it now uses),
so the key leaves ``delta``; a value it cannot use leaves ``reported`` alone and
stays in ``delta``. Other keys are ignored (they stay in ``delta``). On start it
applies the desired intervals its twins already hold (after a restart), and
does so again if a burst of changes outran it (its event queue skipped some).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

from fleetstream.domain.events import DESIRED_CHANGED
from fleetstream.domain.shadow import REPORTED
from fleetstream.errors import FleetstreamError

if TYPE_CHECKING:
    from fleetstream.domain.twin import DeviceEvent, DeviceTwin
    from fleetstream.engine.pipeline import Engine
    from fleetstream.simulator.simulator import Simulator

log = logging.getLogger(__name__)

INTERVAL = "interval_s"
MIN_INTERVAL_S = 0.001
MAX_INTERVAL_S = 86_400.0


def usable_interval(value: Any) -> float | None:
    """``value`` when it is a number of seconds a device can send at, else ``None``.

    Example:
        >>> usable_interval(5), usable_interval(True), usable_interval(0), usable_interval("5")
        (5, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (math.isfinite(value) and MIN_INTERVAL_S <= value <= MAX_INTERVAL_S):
        return None
    return value


class ShadowAgent:
    """Makes a simulator's devices apply their desired ``interval_s`` and report it back."""

    def __init__(self, engine: Engine, simulator: Simulator) -> None:
        self.engine = engine
        self.simulator = simulator
        self.applied = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Apply the desired state already held, then follow changes."""
        active = self.simulator.fleet.active
        sub = self.engine.events.subscribe(lambda e: e.type == DESIRED_CHANGED and e.device_id in active)
        await self._resync()
        self._task = asyncio.create_task(self._follow(sub), name="fleetstream-sim-shadow")

    async def stop(self) -> None:
        """Stop following (what was applied stays)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _resync(self) -> None:
        """Apply every desired interval the twins hold (at start, and after missing events).

        A restarted fleet sends at its own rate whatever its twins report, so each is applied
        again; reporting what is already reported records nothing.
        """
        for twin in await self._twins(list(self.simulator.fleet.active)):
            if INTERVAL in twin.desired:
                await self._apply(twin.device_id, twin.desired)

    async def _twins(self, device_ids: list[str]) -> list[DeviceTwin]:
        """These devices' twins: the engine's, or the stored ones when it holds none of them (the
        idle engine of a cluster's api, where workers store a twin before announcing its change)."""
        held = self.engine.processors.twins
        found = [twin for d in device_ids if (twin := held.get(d)) is not None]
        if found or not device_ids:
            return found
        return await self.engine.store.load_twins(device_ids)

    async def _follow(self, sub: Any) -> None:
        missed = 0
        try:
            while True:
                event: DeviceEvent | None = await sub.get()
                if event is None:
                    return
                if sub.skipped > missed:  # a burst outran us: look at every twin instead
                    missed = sub.skipped
                    await self._resync()
                if INTERVAL not in event.payload["patch"]:
                    continue
                for twin in await self._twins([event.device_id]):
                    await self._apply(event.device_id, twin.desired)
        finally:
            sub.close()

    async def _apply(self, device_id: str, desired: dict[str, Any]) -> None:
        fleet = self.simulator.fleet
        if device_id not in fleet.active:
            return  # removed meanwhile
        wanted = desired.get(INTERVAL)
        interval = 1.0 / fleet.rate if wanted is None else usable_interval(wanted)
        if interval is None:
            log.info("simulated device %s cannot send every %r s: left as it is", device_id, wanted)
            return
        fleet.set_rate(device_id, 1.0 / interval, self.simulator.elapsed_s)
        self.applied += 1
        try:
            await self.engine.update_shadow(device_id, REPORTED, {INTERVAL: interval})
        except FleetstreamError as exc:
            log.warning("simulated device %s could not report its interval: %s", device_id, exc.message)
