"""Serving the embedded runtime for ``fleetstream up``: its sources, the HTTP server, the live
table, and a stop that stores everything accepted before the process exits.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import typer
import uvicorn

from fleetstream import __version__
from fleetstream.config import Settings
from fleetstream.errors import FleetstreamError
from fleetstream.runtime import Runtime

log = logging.getLogger("fleetstream")


def _run_up(settings: Settings) -> int:
    from fleetstream.logs import setup_logging

    console = setup_logging(settings.log_level)
    runtime = Runtime(settings)
    if settings.simulator.enabled and (settings.simulator.devices > 0 or settings.simulator.real_host):
        from fleetstream.simulator.embedded import add_simulator

        add_simulator(runtime)
    if settings.mqtt:
        from fleetstream.adapters.mqtt import add_mqtt_source

        add_mqtt_source(runtime)
    if settings.kafka_source:
        from fleetstream.adapters.kafka_source import add_kafka_source

        add_kafka_source(runtime, settings.kafka_source)
    try:
        import uvloop

        return uvloop.run(_serve(settings, runtime, console))
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(_serve(settings, runtime, console))


class _Server(uvicorn.Server):
    """Ends live streams when shutdown starts (open SSE clients would hold it up), and stops the
    runtime once HTTP has drained, still inside ``serve()`` (uvicorn re-raises the captured
    Ctrl-C when ``serve()`` returns, which must not cut the final store commit short)."""

    def __init__(
        self, config: uvicorn.Config, runtime: Runtime, on_stopped: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.on_stopped = on_stopped

    async def shutdown(self, sockets: Any = None) -> None:
        self.runtime.hub.close()
        await super().shutdown(sockets)
        await self.on_stopped()
        # A stop that stored everything is a success: exit 0 rather than dying by the re-raised
        # SIGTERM/SIGINT (which process supervisors report as a failure).
        self._captured_signals.clear()


async def _serve(settings: Settings, runtime: Runtime, console: Any) -> int:
    from fleetstream.api.app import create_app
    from fleetstream.console import show_live_table

    try:
        await runtime.start()
    except FleetstreamError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg=typer.colors.RED)
        await runtime.stop()
        return 2
    # Everything alive now (modules, settings, adapters) lives as long as the process: move it out of
    # the collector's sight, and collect young objects less often. Ingest allocates a few objects
    # per reading, nearly all freed by reference counting; the default thresholds made the cyclic
    # collector cost about a quarter of ingest throughput.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    app = create_app(settings, runtime=runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        log_level=settings.log_level.lower(),
    )
    url = f"http://{settings.host}:{settings.port}"
    stop = asyncio.Event()
    table = asyncio.create_task(show_live_table(runtime, url, stop, console)) if settings.table else None

    async def on_stopped() -> None:
        if stop.is_set():
            return
        stop.set()
        if table is not None:
            await table
        log.info("stopping: storing what was accepted, closing the store")
        await runtime.stop()
        log.info("stopped cleanly at log position %d", runtime.engine.position)

    server = _Server(config, runtime, on_stopped)
    log.info(
        "fleetstream %s on %s (API docs at %s/docs), data in %s", __version__, url, url, settings.store_url
    )
    try:
        await server.serve()
    finally:
        await on_stopped()
    return 0 if server.started else 1
