"""``fleetstream simulate``: drive any fleetstream server with a simulated fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
