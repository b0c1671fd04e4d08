"""``fleetstream up``: every option of the one-process server, built into the settings tree
once, then the embedded runtime (or cluster mode, for a Kafka bus and a PostgreSQL store) run.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetstream.cli_options import _check_port, _fail, _given
from fleetstream.cli_serve import _run_up
from fleetstream.config import load_settings
from fleetstream.errors import ConfigError
from fleetstream.ingest.mqtt import DEFAULT_TOPIC


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

    The store is a DuckDB file in the data directory, or PostgreSQL given a postgresql:// store
    URL; with a kafka:// bus too, this process is a gateway, a worker and an api (docs/deploy.md).

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
