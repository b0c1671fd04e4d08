"""One running fleetstream: the adapters and processors of a process, opened and closed in order."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from fleetstream.adapters import BUSES, STORES, by_url
from fleetstream.config import Settings
from fleetstream.domain.clock import Clock, SystemClock
from fleetstream.engine.fanout import Hub
from fleetstream.engine.pipeline import Engine
from fleetstream.ingest.gateway import Gateway
from fleetstream.ingest.typeregistry import FILE_NAME as DEVICE_TYPES_FILE
from fleetstream.ingest.typeregistry import UserTypes
from fleetstream.ports import Bus, Source, Store

log = logging.getLogger(__name__)


class Startable(Protocol):
    """Anything run beside the pipeline (the built-in simulator, device-side sources)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Runtime:
    """Store, bus, engine, hub and gateway of one process.

    Start order: store → bus → engine (restores from the store, subscribes) →
    extras (simulator, sources such as MQTT). Stop order is the reverse, and the bus is closed before
    the engine stops so the engine stores everything already queued first:
    nothing acknowledged is lost on a clean shutdown.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        bus: Bus | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store: Store = store or by_url(STORES, settings.store_url, "store")
        self.bus: Bus = bus or by_url(
            BUSES,
            settings.bus,
            "bus",
            max_pending=settings.ingest.queue_max_records,
            ack_timeout_s=settings.ingest.ack_timeout_s,
        )
        self.hub = Hub(self.clock.monotonic)
        self.engine = Engine(
            self.bus, self.store, self.hub, self.clock, settings.engine, settings.stream, settings.predictor
        )
        self.gateway = Gateway(self.bus, self.clock, settings.ingest)
        self.device_types = UserTypes(settings.data / DEVICE_TYPES_FILE)
        self.gateway.user_types = self.device_types
        self.extras: list[Startable] = []
        self.sources: dict[str, Source] = {}
        self.started = False
        self.info: dict[str, Any] = {}

    def add_source(self, source: Source) -> None:
        """Run a device-side source beside HTTP: it feeds :attr:`gateway`, starts after the engine,
        stops before the bus closes (so what it has in hand is stored and acknowledged), and its
        :meth:`~fleetstream.ports.Source.status` shows in the ops endpoints."""
        if source.name in self.sources:
            msg = f"a source named {source.name!r} is already added"
            raise ValueError(msg)
        self.extras.append(source)
        self.sources[source.name] = source

    async def start(self) -> None:
        """Open everything, in order."""
        await self.store.start()
        await self.bus.start()
        await self.engine.start()
        for extra in self.extras:
            await extra.start()
        self.started = True

    async def stop(self) -> None:
        """Close everything, in reverse order, storing what was already accepted."""
        self.started = False
        for extra in reversed(self.extras):
            try:
                await extra.stop()
            except Exception:
                log.exception("stopping %r failed", extra)
        await self.bus.close()
        await self.engine.stop()
        await self.store.close()
