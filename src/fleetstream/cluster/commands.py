"""The cluster-mode commands: ``fleetstream gateway`` and ``fleetstream worker`` (docs/deploy.md)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated, Any

import typer
import uvicorn

from fleetstream.cli import _check_port, _fail, _Server, app
from fleetstream.config import Settings, load_settings
from fleetstream.errors import ConfigError, FleetstreamError
from fleetstream.ingest.mqtt import DEFAULT_TOPIC

log = logging.getLogger("fleetstream")

BusOption = Annotated[
    str,
    typer.Option(
        envvar="FLEETSTREAM_BUS",
        help="the Kafka bus, kafka://host:port (optionally /topic and ?partitions=N)",
    ),
]
StoreOption = Annotated[
    str, typer.Option(envvar="FLEETSTREAM_STORE", help="the PostgreSQL store, postgresql://user@host/db")
]
LogLevelOption = Annotated[str, typer.Option(envvar="FLEETSTREAM_LOG_LEVEL", help="log level")]


class _ClusterServer(_Server):
    """Also ends the live streams the api relays from Kafka when shutdown starts."""

    async def shutdown(self, sockets: Any = None) -> None:
        engine = self.runtime.engine
        for channel in (engine.windows, engine.events, engine.alerts):
            channel.close()
        await super().shutdown(sockets)


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
    mqtt: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_MQTT", help="also take telemetry from this MQTT broker (needs --store)"
        ),
    ] = None,
    mqtt_topic: Annotated[
        str,
        typer.Option(envvar="FLEETSTREAM_MQTT_TOPIC", help="MQTT topic filter; $share/<group>/... to share"),
    ] = DEFAULT_TOPIC,
    kafka_source: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_KAFKA_SOURCE",
            help="also consume device messages from this Kafka topic, kafka://host/topic (needs --store)",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_STORE",
            help="PostgreSQL: device types registered through the api; dead letters of --mqtt/--kafka-source",
        ),
    ] = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Cluster mode: take HTTP telemetry (and MQTT or Kafka device messages) and publish it to Kafka.

    Answers 202 once the broker acknowledged, 503 with Retry-After while it is unreachable.
    Run as many gateways as you like behind a load balancer; workers process what they publish.
    """
    from fleetstream.cluster.gateway import GatewayNode, create_gateway_app
    from fleetstream.logs import setup_logging

    settings = _settings(
        bus=bus,
        host=host,
        port=port,
        log_level=log_level,
        mqtt=mqtt,
        mqtt_topic=mqtt_topic,
        kafka_source=kafka_source,
        store=store,
    )
    _check_port(settings.host, settings.port)
    setup_logging(settings.log_level)
    try:
        node = GatewayNode(settings)
    except ConfigError as exc:
        raise _fail(exc.message) from None

    async def serve() -> int:
        try:
            await node.start()
        except FleetstreamError as exc:  # the store (for device types, dead letters) is unreachable
            typer.secho(f"error: {exc.message}", err=True, fg=typer.colors.RED)
            await node.stop()
            return 2
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
        return 0

    raise typer.Exit(asyncio.run(serve()))


@app.command()
def worker(
    bus: BusOption,
    store: StoreOption,
    log_level: LogLevelOption = "info",
    session_timeout_ms: Annotated[
        int | None,
        typer.Option(
            envvar="FLEETSTREAM_KAFKA_GROUP__SESSION_TIMEOUT_MS",
            help="a worker silent this long loses its partitions (default 3000; 6000 where the "
            "broker refuses less)",
            show_default=False,
        ),
    ] = None,
    heartbeat_interval_ms: Annotated[
        int | None,
        typer.Option(
            envvar="FLEETSTREAM_KAFKA_GROUP__HEARTBEAT_INTERVAL_MS",
            help="how often a worker heartbeats (default 500)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Cluster mode: process the readings topic from Kafka into PostgreSQL, one member of a group.

    A member of the consumer group fleetstream-workers: dedup, windows, twins, rules, persist.
    Start more to share the partitions; SIGTERM leaves the group cleanly.
    """
    from fleetstream.cluster.worker import Worker
    from fleetstream.logs import setup_logging

    timeouts = {"session_timeout_ms": session_timeout_ms, "heartbeat_interval_ms": heartbeat_interval_ms}
    group = {k: v for k, v in timeouts.items() if v is not None} or None
    settings = _settings(bus=bus, store=store, log_level=log_level, kafka_group=group)
    _check_store(settings)
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


@app.command()
def api(
    bus: BusOption,
    store: StoreOption,
    host: Annotated[str, typer.Option(envvar="FLEETSTREAM_HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="FLEETSTREAM_PORT", help="HTTP port")] = 8000,
    log_level: LogLevelOption = "info",
) -> None:
    """Cluster mode: the HTTP API (queries, rules, live streams) over the shared PostgreSQL store.

    Fleet windows are merged from the workers' partials; ingest publishes to Kafka like a gateway.
    Run as many as you like.
    """
    settings = _settings(bus=bus, store=store, host=host, port=port, log_level=log_level)
    _check_store(settings)
    _check_port(settings.host, settings.port)
    raise typer.Exit(asyncio.run(serve_cluster(settings, with_worker=False)))


def _check_store(settings: Settings) -> None:
    if not settings.store_url.startswith(("postgresql://", "postgres://")):
        msg = f"cluster mode needs a PostgreSQL store: --store postgresql://... (got {settings.store_url!r})"
        raise _fail(msg)


async def serve_cluster(settings: Settings, *, with_worker: bool) -> int:
    """Serve the api (and, with ``with_worker``, a worker in the same process: ``up`` on Kafka and
    PostgreSQL); returns the exit code."""
    from fleetstream.api.app import create_app
    from fleetstream.cluster.api import ApiRuntime, SingleWriterOnly
    from fleetstream.cluster.worker import Worker
    from fleetstream.logs import setup_logging

    setup_logging(settings.log_level)
    runtime = ApiRuntime(settings)
    node = Worker(settings) if with_worker else None
    sim = settings.simulator
    if node is not None and sim.enabled and (sim.devices > 0 or sim.real_host):
        from fleetstream.simulator.embedded import add_simulator

        add_simulator(runtime)  # sends through this process's gateway to Kafka, as HTTP ingest does
    try:
        await runtime.start()
        if node is not None:
            await node.start()
    except FleetstreamError as exc:
        typer.secho(f"error: {exc.message}", err=True, fg=typer.colors.RED)
        await runtime.stop()
        return 2
    app_ = create_app(settings, runtime=runtime)
    if node is None:  # a standalone api runs no simulator: its control writes say what to use
        app_.add_middleware(SingleWriterOnly)
    config = uvicorn.Config(
        app_,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        log_level=settings.log_level.lower(),
    )
    stopped = False

    async def on_stopped() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        if node is not None:
            await node.stop()
        await runtime.stop()

    server = _ClusterServer(config, runtime, on_stopped)
    log.info("api on http://%s:%d over %s", settings.host, settings.port, settings.bus)
    try:
        await server.serve()
    finally:
        await on_stopped()
    return 0 if server.started else 1


def run_up_cluster(settings: Settings) -> int:
    """``fleetstream up --bus kafka://... --store postgresql://...``: gateway, worker, api and the
    built-in simulator in one process (one member of the worker group; start ``fleetstream worker``
    processes to add more)."""
    from fleetstream.logs import setup_logging

    setup_logging(settings.log_level)
    return asyncio.run(serve_cluster(settings, with_worker=True))
