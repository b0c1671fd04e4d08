"""``fleetstream api``: every query endpoint from the shared PostgreSQL store, no processing.

The api process runs the same HTTP app as ``fleetstream up`` over a runtime whose engine does not
consume: queries read the store (fleet windows merged from the workers' partials, see
:mod:`.fleet`), ingest publishes to Kafka as a gateway does, and the live streams and statistics
come from the workers through Kafka (:mod:`.live`). What needs the single writer of a
device's state (rule and zone changes, alert acknowledgements, device shadow updates, the
built-in simulator, device type registration) answers 501 with a message saying so: in cluster
mode these are not forwarded to the owning worker yet (docs/deploy.md, "Cluster mode").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import cast

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.cluster.fleet import ClusterPostgresStore
from fleetstream.cluster.live import LiveRelay
from fleetstream.config import Settings
from fleetstream.ports import Store
from fleetstream.runtime import Runtime

_SINGLE_WRITER = re.compile(
    r"^/api/v1/(rules|zones)(/.*)?$"
    r"|^/api/v1/alerts/.+/ack$"
    r"|^/api/v1/devices/[^/]+/(desired|reported)$"
    r"|^/api/v1/simulator(/.*)?$"
    r"|^/api/v1/device-types(/.*)?$"
)
_WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))
NOT_IN_CLUSTER = (
    "not available in cluster mode yet: rules, zones, alert acknowledgements, device shadow updates, "
    "device types and the simulator change state that one worker owns; run them on `fleetstream up` "
    "(embedded mode) for now"
)


class ApiRuntime(Runtime):
    """Store and bus of an api process; its engine stays idle (the workers process)."""

    def __init__(self, settings: Settings) -> None:
        # the PostgreSQL store has no rule definitions yet: those endpoints answer 501 here
        super().__init__(settings, store=cast("Store", ClusterPostgresStore(settings.store_url)))
        self._idle: asyncio.Task[None] | None = None
        self.relay: LiveRelay | None = None

    async def start(self) -> None:
        await self.store.start()
        await self.bus.start()
        self.engine.sensors_seen = await self.store.sensors()
        if isinstance(self.bus, KafkaBus):
            self.relay = LiveRelay(self.bus, self.engine)
            await self.relay.start()
        # readiness looks at the engine's task: here it only says the api is up
        self._idle = asyncio.create_task(_forever(), name="fleetstream-api")
        self.engine._task = self._idle
        self.started = True

    async def stop(self) -> None:
        self.started = False
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
    """ASGI middleware: 501 (with the reason) for writes that need the owning worker."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _WRITES and _SINGLE_WRITER.match(scope["path"]):
            body = msgspec.json.encode(
                {"error": {"code": "not_implemented", "message": NOT_IN_CLUSTER, "details": None}}
            )
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 501, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
