"""``fleetstream gateway``: HTTP ingest straight to the Kafka bus, with no store and no engine.

A request is answered 202 only once the broker acknowledged every accepted message (the bus's
publish waits for its delivery reports); while the broker cannot be reached the answer is 503
with ``Retry-After`` and an error body naming the broker, never a crash. ``/readyz`` asks the
broker for its metadata, so a load balancer stops sending to a gateway whose broker is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from fleetstream import __version__
from fleetstream.adapters import BUSES, by_url
from fleetstream.api import errors
from fleetstream.api.routes import ingest
from fleetstream.config import Settings
from fleetstream.domain.clock import Clock, SystemClock
from fleetstream.ingest.gateway import Gateway
from fleetstream.ports import Bus

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0


class GatewayNode:
    """The bus and the gateway of one gateway process (what the ingest routes need)."""

    def __init__(self, settings: Settings, *, bus: Bus | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.bus: Bus = bus or by_url(
            BUSES,
            settings.bus,
            "bus",
            max_pending=settings.ingest.queue_max_records,
            ack_timeout_s=settings.ingest.ack_timeout_s,
        )
        self.gateway = Gateway(self.bus, self.clock, settings.ingest)
        self.started = False

    async def start(self) -> None:
        """Connect to the broker (a broker that is down only makes publishes fail until it is back)."""
        await self.bus.start()
        self.started = True

    async def stop(self) -> None:
        """Disconnect; publishes still waiting fail (their senders get a 503 and retry)."""
        self.started = False
        await self.bus.close()

    async def broker_status(self) -> tuple[bool, str]:
        """Whether the broker answers a metadata request now, and what it said."""
        config = getattr(self.bus, "config", None)
        if config is None:  # an in-memory bus is always there
            return True, "in-memory bus"
        from confluent_kafka.admin import AdminClient

        def probe() -> int:
            return len(AdminClient(config).list_topics(timeout=_PROBE_TIMEOUT_S).brokers)

        try:
            brokers = await asyncio.to_thread(probe)
        except Exception as exc:
            return False, f"Kafka broker {config.get('bootstrap.servers')} unreachable: {exc}"
        return True, f"{brokers} broker(s) at {config.get('bootstrap.servers')}"


def create_gateway_app(node: GatewayNode) -> FastAPI:
    """The gateway's HTTP API: the ingest routes, ``/healthz`` and ``/readyz``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(title="fleetstream gateway", version=__version__, lifespan=lifespan)
    app.state.runtime = node  # the ingest routes take the settings and the gateway from it
    errors.install(app)
    app.include_router(ingest.router)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the broker answers")
    async def readyz() -> JSONResponse:
        if not node.started:
            return JSONResponse({"status": "unavailable", "reason": "gateway not started"}, 503)
        ok, detail = await node.broker_status()
        body: dict[str, Any] = {"status": "ready" if ok else "unavailable", "broker": detail}
        if not ok:
            body["reason"] = detail
        return JSONResponse(body, 200 if ok else 503)

    return app
