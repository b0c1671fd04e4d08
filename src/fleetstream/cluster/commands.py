"""The cluster-mode commands: ``fleetstream gateway`` and ``fleetstream worker`` (docs/deploy.md)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated, Any

import typer
import uvicorn

from fleetstream.cli import _check_port, _fail, app
from fleetstream.config import Settings, load_settings
from fleetstream.errors import ConfigError, FleetstreamError

log = logging.getLogger("fleetstream")

BusOption = Annotated[
    str,
    typer.Option(envvar="FLEETSTREAM_BUS", help="the Kafka bus, kafka://host:port[/topic][?partitions=N]"),
]
StoreOption = Annotated[
    str, typer.Option(envvar="FLEETSTREAM_STORE", help="the PostgreSQL store, postgresql://user@host/db")
]
LogLevelOption = Annotated[str, typer.Option(envvar="FLEETSTREAM_LOG_LEVEL", help="log level")]


class _CleanExit(uvicorn.Server):
    """A stop on SIGTERM/SIGINT that drained HTTP is a success: exit 0, not by the re-raised signal."""

    async def shutdown(self, sockets: Any = None) -> None:
        await super().shutdown(sockets)
        self._captured_signals.clear()


def _settings(**overrides: object) -> Settings:
    try:
        settings = load_settings(table=False, **overrides)
    except ConfigError as exc:
        raise _fail(exc.message) from None
    if not settings.bus.startswith("kafka://"):
        msg = f"cluster mode needs a Kafka bus: --bus kafka://host:port (got {settings.bus!r})"
        raise _fail(msg)
    return settings


@app.command()
def gateway(
    bus: BusOption,
    host: Annotated[str, typer.Option(envvar="FLEETSTREAM_HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="FLEETSTREAM_PORT", help="HTTP port")] = 8000,
    log_level: LogLevelOption = "info",
) -> None:
    """Cluster mode: take HTTP telemetry and publish it to Kafka (no store, no processing).

    Answers 202 once the broker acknowledged, 503 with Retry-After while it is unreachable.
    Run as many gateways as you like behind a load balancer; workers process what they publish.
    """
    from fleetstream.cluster.gateway import GatewayNode, create_gateway_app
    from fleetstream.logs import setup_logging

    settings = _settings(bus=bus, host=host, port=port, log_level=log_level)
    _check_port(settings.host, settings.port)
    setup_logging(settings.log_level)
    node = GatewayNode(settings)

    async def serve() -> None:
        await node.start()
        try:
            config = uvicorn.Config(
                create_gateway_app(node),
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=5,
                log_level=settings.log_level.lower(),
            )
            log.info("gateway on http://%s:%d publishing to %s", settings.host, settings.port, settings.bus)
            await _CleanExit(config).serve()
        finally:
            await node.stop()

    asyncio.run(serve())


@app.command()
def worker(
    bus: BusOption,
    store: StoreOption,
    log_level: LogLevelOption = "info",
) -> None:
    """Cluster mode: one member of the consumer group fleetstream-workers (dedup, windows, twins,
    rules, persist to PostgreSQL). Start more to share the partitions; SIGTERM leaves the group cleanly."""
    from fleetstream.cluster.worker import Worker
    from fleetstream.logs import setup_logging

    settings = _settings(bus=bus, store=store, log_level=log_level)
    if not settings.store_url.startswith(("postgresql://", "postgres://")):
        msg = f"cluster mode needs a PostgreSQL store: --store postgresql://... (got {store!r})"
        raise _fail(msg)
    setup_logging(settings.log_level)

    async def run() -> int:
        try:
            node = Worker(settings)
            await node.start()
        except FleetstreamError as exc:
            typer.secho(f"error: {exc.message}", err=True, fg=typer.colors.RED)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("worker %s stopping: leaving the group", node.worker_id)
        await node.stop()
        return 0

    raise typer.Exit(asyncio.run(run()))
