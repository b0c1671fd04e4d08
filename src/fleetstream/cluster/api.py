"""``fleetstream api``: every query endpoint from the shared PostgreSQL store, no processing.

The api process runs the same HTTP app as ``fleetstream up`` over a runtime whose engine does not
consume: queries read the store (fleet windows merged from the workers' partials, see
:mod:`.fleet`), ingest publishes to Kafka as a gateway does, and the live streams and statistics
come from the workers through Kafka (:mod:`.live`). Rule and zone changes are stored for the
workers to apply; alert acknowledgements and device shadow updates go to the worker owning the
device (:mod:`.api_writes`). Device types are registered in the store and re-read every second
(:mod:`.typestore`), by every api and gateway. The built-in simulator runs only in ``fleetstream
up`` on Kafka and PostgreSQL (one process, sending through its gateway); on a ``fleetstream api``
its control writes answer 501 with a message naming ``fleetstream simulate`` (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import cast

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.cluster import writes
from fleetstream.cluster.api_writes import ApiEngine
from fleetstream.cluster.fleet import ClusterPostgresStore
from fleetstream.cluster.live import LiveRelay
from fleetstream.cluster.typestore import StoredTypes
from fleetstream.config import Settings
from fleetstream.ports import Store
from fleetstream.runtime import Runtime

log = logging.getLogger(__name__)

_SINGLE_WRITER = re.compile(r"^/api/v1/simulator(/.*)?$")
_WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))
# The raw readings streams: the workers publish windows, events and alerts, not every reading, so
# on an api these would stay open and silent forever (docs/deploy.md, "Not in cluster mode yet").
_RAW_STREAMS = re.compile(r"^/api/v1/stream/?$|^/api/devices/[^/]+/messages/?$")
NO_RAW_STREAM = (
    "the raw readings stream is not relayed in cluster mode: watch /api/v1/stream/windows?device_id=... "
    'or /api/v1/stream/events, or query /api/v1/series (docs/deploy.md, "Not in cluster mode yet")'
)
NOT_IN_CLUSTER = (
    "the built-in simulator does not run in `fleetstream api`: it runs in `fleetstream up` (also with "
    "--bus kafka://... --store postgresql://...); to load a cluster, run `fleetstream simulate --target "
    "http://GATEWAY_HOST:PORT --devices N` against a gateway"
)


class ApiRuntime(Runtime):
    """Store and bus of an api process; its engine stays idle (the workers process)."""

    engine: ApiEngine
    device_types: StoredTypes

    def __init__(self, settings: Settings) -> None:
        store = ClusterPostgresStore(settings.store_url)
        super().__init__(settings, store=cast("Store", store))
        # an engine that never consumes: its writes go to the workers (see .api_writes)
        self.engine = ApiEngine(
            self.bus,
            self.store,
            self.hub,
            self.clock,
            settings.engine,
            settings.stream,
            settings.predictor,
            cluster_store=store,
            command_timeout_s=settings.ingest.ack_timeout_s,  # as long as ingest waits for durability
        )
        # the registry every api and gateway shares (the data dir's file is embedded mode's)
        self.device_types = StoredTypes(store)
        self.gateway.user_types = self.device_types
        self._idle: asyncio.Task[None] | None = None
        self.relay: LiveRelay | None = None

    async def start(self) -> None:
        await self.store.start()
        await self.bus.start()
        self.engine.sensors_seen = await self.store.sensors()
        await writes.create_table(self.engine.cluster_store)
        await self.engine.rules.start()
        await self.device_types.start()
        await self.engine.models.start()
        if isinstance(self.bus, KafkaBus):
            self.relay = LiveRelay(self.bus, self.engine)
            await self.relay.start()
        for extra in self.extras:  # the built-in simulator of `up` (publishing through the gateway)
            await extra.start()
        # readiness looks at the engine's task: here it only says the api is up
        self._idle = asyncio.create_task(_forever(), name="fleetstream-api")
        self.engine._task = self._idle
        self.started = True

    async def stop(self) -> None:
        self.started = False
        for extra in reversed(self.extras):  # what they hold is published before the bus closes
            try:
                await extra.stop()
            except Exception:
                log.exception("stopping %r failed", extra)
        await self.engine.rules.stop()
        await self.device_types.stop()
        await self.engine.models.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self._idle is not None:
            self._idle.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle
        await self.bus.close()
        await self.store.close()


async def _forever() -> None:
    await asyncio.Event().wait()


class SingleWriterOnly:
    """ASGI middleware of ``fleetstream api``: what only one process can do, answered with the
    reason: 501 for the simulator's writes and the raw readings streams, 404 for the simulator's
    reads (with what to run instead, not the embedded server's hint to start ``up --simulator``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if _SINGLE_WRITER.match(path):
                if method in _WRITES:
                    await _error(send, 501, "not_implemented", NOT_IN_CLUSTER)
                    return
                await _error(send, 404, "not_found", NOT_IN_CLUSTER)
                return
            if _RAW_STREAMS.match(path):
                await _error(send, 501, "not_implemented", NO_RAW_STREAM)
                return
        await self.app(scope, receive, send)


async def _error(send: Send, status: int, code: str, message: str) -> None:
    body = msgspec.json.encode({"error": {"code": code, "message": message, "details": None}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
