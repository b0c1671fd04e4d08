"""The app factory: ``create_app(settings)`` opens the runtime in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from fleetstream import __version__
from fleetstream.api import errors
from fleetstream.api.fastlane import IngestFastLane
from fleetstream.api.routes import alerts as alert_routes
from fleetstream.api.routes import deadletters, devices, devicetypes, ingest, live, ops, query, windows
from fleetstream.api.routes import models as model_routes
from fleetstream.api.routes import rules as rule_routes
from fleetstream.api.routes import shadow as shadow_routes
from fleetstream.api.routes import simulator as simulator_routes
from fleetstream.config import Settings
from fleetstream.domain.clock import Clock
from fleetstream.ports import Bus, Store
from fleetstream.runtime import Runtime

_INDEX = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")

DESCRIPTION = """
Device telemetry: send readings (`POST /api/v1/telemetry`), query aggregates
(`GET /api/v1/metrics`, `POST /compute/metrics`), watch live (`GET /api/v1/stream`,
`POST /api/devices/{id}/messages`, `GET /api/v1/stats/live`).

Errors have the body `{"error": {"code", "message", "details"}}`, except ingest
(per-item `rejected`) and `/compute/metrics` (its own `errors` list).
"""


def create_app(
    settings: Settings,
    *,
    bus: Bus | None = None,
    store: Store | None = None,
    clock: Clock | None = None,
    configure: Callable[[Runtime], None] | None = None,
    runtime: Runtime | None = None,
) -> FastAPI:
    """Build the API. Adapters open when the app starts and close when it stops.

    Args:
        settings: the settings tree.
        bus, store, clock: replacements for the ones the settings name (tests).
        configure: called with the runtime before it starts (e.g. to add the simulator).
        runtime: an already built runtime whose start and stop the caller owns (the CLI starts
            it before serving, so that a store that cannot open is a clear message, not a
            traceback); when given, the lifespan leaves it alone.
    """
    owned = runtime is None
    rt = runtime or Runtime(settings, bus=bus, store=store, clock=clock)
    if configure is not None:
        configure(rt)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await rt.start()
        try:
            yield
        finally:
            if owned:
                await rt.stop()

    app = FastAPI(title="fleetstream", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.runtime = rt
    errors.install(app)
    app.add_middleware(IngestFastLane, runtime=rt)
    for module in (ingest, deadletters, query, windows, devices, devicetypes, live, ops):
        app.include_router(module.router)
    app.include_router(simulator_routes.router)
    app.include_router(model_routes.router)
    app.include_router(rule_routes.router)
    app.include_router(alert_routes.router)
    app.include_router(shadow_routes.router)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_INDEX)

    return app
