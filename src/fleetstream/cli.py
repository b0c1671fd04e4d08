"""The ``fleetstream`` command.

Every option also reads an environment variable, shown in ``--help``; the
settings tree is built here once and passed down.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from fleetstream import __version__
from fleetstream.config import Settings, load_settings
from fleetstream.errors import ConfigError, FleetstreamError
from fleetstream.ingest.mqtt import DEFAULT_TOPIC
from fleetstream.runtime import Runtime

app = typer.Typer(
    name="fleetstream",
    help="Device telemetry: simulate a fleet, ingest, validate, process, store, query and watch it live.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("fleetstream")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@app.command()
def up(
    host: Annotated[str, typer.Option(envvar="FLEETSTREAM_HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="FLEETSTREAM_PORT", help="HTTP port")] = 8000,
    data: Annotated[
        Path, typer.Option(envvar="FLEETSTREAM_DATA", help="directory of the DuckDB file")
    ] = Path("data"),
    devices: Annotated[
        int, typer.Option(envvar="FLEETSTREAM_SIMULATOR__DEVICES", help="simulated devices")
    ] = 50,
    rate: Annotated[
        float,
        typer.Option(envvar="FLEETSTREAM_SIMULATOR__RATE", help="messages per simulated device per second"),
    ] = 1.0,
    simulator: Annotated[
        bool, typer.Option(envvar="FLEETSTREAM_SIMULATOR__ENABLED", help="run the built-in simulator")
    ] = True,
    seed: Annotated[
        int | None, typer.Option(envvar="FLEETSTREAM_SIMULATOR__SEED", help="simulator random seed")
    ] = None,
    real_host: Annotated[
        bool,
        typer.Option(
            envvar="FLEETSTREAM_SIMULATOR__REAL_HOST",
            help="simulator: add one device with this machine's real CPU, memory, temperatures, fans",
        ),
    ] = False,
    jitter: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_SIMULATOR__JITTER_S",
            help="simulator: delay each send by 0..this, e.g. 2s (event time unchanged; default 0)",
        ),
    ] = None,
    duplicates: Annotated[
        float | None,
        typer.Option(
            envvar="FLEETSTREAM_SIMULATOR__DUPLICATES",
            help="simulator: fraction of messages sent twice, e.g. 0.05 (default 0)",
        ),
    ] = None,
    late: Annotated[
        float | None,
        typer.Option(
            envvar="FLEETSTREAM_SIMULATOR__LATE",
            help="simulator: fraction of messages held back past the allowed lateness, e.g. 0.01 (default 0)",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_STORE", help="store URL (default duckdb:///<data>/fleetstream.duckdb)"
        ),
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_BUS", help="the durable log: memory:// (default) or kafka://host:port"
        ),
    ] = None,
    mqtt: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_MQTT",
            help="also take telemetry from this MQTT broker, e.g. mqtt://127.0.0.1:1883 (docs/mqtt.md)",
        ),
    ] = None,
    mqtt_topic: Annotated[
        str,
        typer.Option(
            envvar="FLEETSTREAM_MQTT_TOPIC",
            help="MQTT topic filter (the first + level is the device id); $share/<group>/... to share load",
        ),
    ] = DEFAULT_TOPIC,
    kafka_source: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_KAFKA_SOURCE",
            help="also consume device messages from this Kafka topic, e.g. kafka://127.0.0.1:9092/device-events"
            " (docs/kafka.md)",
        ),
    ] = None,
    table: Annotated[
        bool, typer.Option(envvar="FLEETSTREAM_TABLE", help="show the live metrics table in the terminal")
    ] = True,
    unsafe_no_auth: Annotated[
        bool,
        typer.Option(envvar="FLEETSTREAM_UNSAFE_NO_AUTH", help="allow a non-loopback --host without auth"),
    ] = False,
    log_level: Annotated[str, typer.Option(envvar="FLEETSTREAM_LOG_LEVEL", help="log level")] = "info",
    window: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_STREAM__WINDOWS",
            help="tumbling event-time window sizes, comma-separated (default 10s,1m)",
        ),
    ] = None,
    out_of_orderness: Annotated[
        float | None,
        typer.Option(
            envvar="FLEETSTREAM_STREAM__OUT_OF_ORDERNESS_S",
            help="seconds of disorder the watermark waits for (default 5)",
        ),
    ] = None,
    allowed_lateness: Annotated[
        float | None,
        typer.Option(
            envvar="FLEETSTREAM_STREAM__ALLOWED_LATENESS_S",
            help="seconds an emitted window still takes late readings, as a new version (default 30)",
        ),
    ] = None,
    predictor: Annotated[
        bool | None,
        typer.Option(envvar="FLEETSTREAM_PREDICTOR__ENABLED", help="score failure risk (docs/prediction.md)"),
    ] = None,
    predictor_threshold: Annotated[
        float | None,
        typer.Option(
            envvar="FLEETSTREAM_PREDICTOR__THRESHOLD",
            help="risk that opens a failure_predicted alert (default: the model's validated threshold)",
        ),
    ] = None,
) -> None:
    """Run everything in one process: HTTP API, ingest, processors, store, simulator.

    The store is a DuckDB file under --data, or PostgreSQL with --store postgresql://...
    With --bus kafka://... too, this process is a gateway, a worker and an api (docs/deploy.md).

    With --mqtt, devices may also publish to an MQTT broker (QoS 1, acknowledged once stored).
    Open http://127.0.0.1:8000 (API docs at /docs). Ctrl-C stops cleanly: every
    acknowledged reading is already stored.
    """
    knobs = {"jitter_s": jitter, "duplicates": duplicates, "late": late}
    chosen = {name: value for name, value in knobs.items() if value is not None}  # else env / file / default
    try:
        settings = load_settings(
            host=host,
            port=port,
            data=data,
            store=store,
            bus=bus,
            mqtt=mqtt,
            mqtt_topic=mqtt_topic,
            kafka_source=kafka_source,
            table=table,
            unsafe_no_auth=unsafe_no_auth,
            log_level=log_level,
            simulator={
                "enabled": simulator,
                "devices": devices,
                "rate": rate,
                "seed": seed,
                "real_host": real_host,
                **chosen,
            },
            stream=_given(
                windows=window, out_of_orderness_s=out_of_orderness, allowed_lateness_s=allowed_lateness
            ),
            predictor=_given(enabled=predictor, threshold=predictor_threshold),
        )
    except ConfigError as exc:
        raise _fail(exc.message) from None
    _check_port(settings.host, settings.port)
    if settings.bus.startswith("kafka://") and settings.store_url.startswith(("postgresql:", "postgres:")):
        from fleetstream.cluster.commands import run_up_cluster  # gateway + worker + api (docs/deploy.md)

        code = run_up_cluster(settings)
    else:
        code = _run_up(settings)
    # Everything is stored and closed by now. Skip interpreter teardown: the DuckDB and Arrow
    # bindings print pages of "nanobind: leaked ..." warnings there, which only alarm users.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _given(**values: Any) -> dict[str, Any] | None:
    """The options given (flag or env var), so unset ones keep the settings' defaults and TOML values."""
    chosen = {k: v for k, v in values.items() if v is not None}
    return chosen or None


def _check_port(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                msg = f"port {port} on {host} is in use; pick another with --port"
                raise _fail(msg) from None
            msg = f"cannot listen on {host}:{port}: {exc.strerror}"
            raise _fail(msg) from None


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


@app.command()
def simulate(
    target: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_SIM_TARGET",
            help="where to send: http://host:port, mqtt://host:port/prefix or kafka://host:port/topic"
            " (prefix and topic optional; default: mqtt from MQTT_HOST, MQTT_PORT, MQTT_TOPIC if set,"
            " else http://127.0.0.1:8000)",
        ),
    ] = None,
    devices: Annotated[int, typer.Option(envvar="FLEETSTREAM_SIM_DEVICES", help="simulated devices")] = 100,
    rate: Annotated[
        float, typer.Option(envvar="FLEETSTREAM_SIM_RATE", help="messages per device per second")
    ] = 1.0,
    duration: Annotated[
        float | None,
        typer.Option(envvar="FLEETSTREAM_SIM_DURATION", help="seconds to run (default: until Ctrl-C)"),
    ] = None,
    seed: Annotated[int | None, typer.Option(envvar="FLEETSTREAM_SIM_SEED", help="random seed")] = None,
    batch: Annotated[
        int, typer.Option(envvar="FLEETSTREAM_SIM_BATCH", help="most messages per request")
    ] = 500,
    jitter: Annotated[
        str,
        typer.Option(
            envvar="FLEETSTREAM_SIM_JITTER",
            help="delay each send by 0..this (event time unchanged), e.g. 500ms, 2s: arrivals out of order",
        ),
    ] = "0",
    duplicates: Annotated[
        float,
        typer.Option(
            envvar="FLEETSTREAM_SIM_DUPLICATES",
            help="fraction of messages sent twice (same payload and msg_id), e.g. 0.05",
        ),
    ] = 0.0,
    late: Annotated[
        float,
        typer.Option(
            envvar="FLEETSTREAM_SIM_LATE",
            help="fraction of messages held back for --late-delay (too late for the server's windows)",
        ),
    ] = 0.0,
    late_delay: Annotated[
        str,
        typer.Option(
            envvar="FLEETSTREAM_SIM_LATE_DELAY",
            help="how long late messages are held: > out-of-orderness 5s + allowed lateness 30s + jitter",
        ),
    ] = "50s",
    clock_skew: Annotated[
        str,
        typer.Option(
            envvar="FLEETSTREAM_SIM_CLOCK_SKEW",
            help="each device's clock is off by a fixed offset in [-this, +this], e.g. 2s",
        ),
    ] = "0",
    truth: Annotated[
        Path | None,
        typer.Option(
            envvar="FLEETSTREAM_SIM_TRUTH",
            help="write distinct and late readings per sensor and window to this .csv or .json file",
        ),
    ] = None,
    truth_window: Annotated[
        str, typer.Option(envvar="FLEETSTREAM_SIM_TRUTH_WINDOW", help="window size of the --truth file")
    ] = "10s",
    kinds: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_SIM_KINDS", help="device kinds, e.g. thermostat,tracker,host (default: all)"
        ),
    ] = None,
    failure_rate: Annotated[
        float, typer.Option(envvar="FLEETSTREAM_SIM_FAILURE_RATE", help="degradations per device-hour")
    ] = 0.5,
    failures: Annotated[
        Path | None,
        typer.Option(
            envvar="FLEETSTREAM_SIM_FAILURES", help="write each device failure to this .jsonl or .csv"
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETSTREAM_SIM_REGION", help="trackers' box: south,west,north,east (default Amsterdam)"
        ),
    ] = None,
    real_host: Annotated[
        bool,
        typer.Option(
            envvar="FLEETSTREAM_SIM_REAL_HOST",
            help="add one device, host-<hostname>, with this machine's real CPU, memory, temperatures, fans",
        ),
    ] = False,
) -> None:
    """Drive any fleetstream server with a simulated fleet, printing progress.

    Thermostats, barometers, hygrometers, heart-rate meters and host monitors,
    values on bounded random walks, event time from the device. --jitter,
    --duplicates, --late and --clock-skew make the input imperfect the way real
    fleets are; --truth writes what the server's windows should then hold.
    Durations: 500ms, 2s, 1m or seconds. Exit code 0 when every message was
    acknowledged, 1 when some failed, 2 for bad options.
    """
    from fleetstream.simulator.cli import simulate as run_simulation

    code = run_simulation(
        devices,
        rate,
        target,
        duration,
        seed,
        batch,
        jitter=jitter,
        duplicates=duplicates,
        late=late,
        late_delay=late_delay,
        clock_skew=clock_skew,
        truth=truth,
        truth_window=truth_window,
        kinds=kinds,
        failure_rate=failure_rate,
        failures=failures,
        region=region,
        real_host=real_host,
    )
    raise typer.Exit(code)


@app.command()
def train(
    store: Annotated[
        str, typer.Option(envvar="FLEETSTREAM_TRAIN_STORE", help="the DuckDB file (or store URL)")
    ],
    failures: Annotated[
        Path,
        typer.Option(envvar="FLEETSTREAM_TRAIN_FAILURES", help="ground truth: `simulate --failures FILE`"),
    ],
    sites: Annotated[int, typer.Option(envvar="FLEETSTREAM_TRAIN_SITES", help="sites (device id hash)")] = 4,
    rounds: Annotated[int, typer.Option(envvar="FLEETSTREAM_TRAIN_ROUNDS", help="federated rounds")] = 10,
    epochs: Annotated[int, typer.Option(envvar="FLEETSTREAM_TRAIN_EPOCHS", help="steps per round")] = 10,
    window: Annotated[int, typer.Option(envvar="FLEETSTREAM_TRAIN_WINDOW", help="window size, seconds")] = 60,
    site_map: Annotated[
        Path | None, typer.Option(envvar="FLEETSTREAM_TRAIN_SITE_MAP", help="CSV: device_id,site")
    ] = None,
) -> None:
    """Train the failure predictor by federated rounds on a store's windows; store each round.

    See docs/prediction.md. The rounds are then listed by GET /api/v1/models.
    """
    from fleetstream.predictor_training import format_rounds, run_training

    options = {"sites": sites, "rounds": rounds, "epochs": epochs, "size_us": window * 1_000_000}
    try:
        saved = asyncio.run(run_training(store, failures, site_map=site_map, **options))
    except FleetstreamError as exc:
        raise _fail(str(exc)) from None
    typer.echo(format_rounds(saved))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"fleetstream {__version__}")


def main() -> None:
    """Entry point of the ``fleetstream`` script."""
    app()


# cluster mode (gateway, worker) registers its commands on ``app``
from fleetstream.cluster import commands as _cluster_commands  # noqa: E402, F401
