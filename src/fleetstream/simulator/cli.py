"""``fleetstream simulate``: run a simulated fleet against a server, with a progress line.

The typer app wires :func:`simulate` to its options; this module knows
nothing of typer, so it can be called (and tested) as a plain function.

This module checks the options and sets the run up; driving it, its progress line and its
summary are in :mod:`~fleetstream.simulator.cli_run`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from rich.console import Console

from fleetstream.domain.clock import SystemClock
from fleetstream.errors import ConfigError
from fleetstream.simulator.brokers import target_from_env
from fleetstream.simulator.cli_run import _drive, _knobs, _Outcome, _summary, _Truth, _truth_meta
from fleetstream.simulator.delivery import DeliveryOptions, parse_duration
from fleetstream.simulator.failures import failure_rows, write_failures
from fleetstream.simulator.fleet import parse_kinds
from fleetstream.simulator.lifecycle import LifecycleOptions
from fleetstream.simulator.realhost import real_host_for
from fleetstream.simulator.simulator import Simulator
from fleetstream.simulator.tracker import Region
from fleetstream.simulator.transports import transport_for
from fleetstream.simulator.truth import GroundTruth

DEFAULT_TARGET = "http://127.0.0.1:8000"
EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_CONFIG = 2
# The server's defaults: a reading is late once the watermark (newest event time - 5 s) has passed
# the end of its 10 s window by the allowed lateness (30 s).
_SERVER_OUT_OF_ORDER_S = 5.0
_SERVER_WINDOW_S = 10.0
_SERVER_LATENESS_S = 30.0


def simulate(
    devices: int,
    rate: float,
    target: str | None,
    duration: float | None,
    seed: int | None,
    batch: int,
    *,
    jitter: float | str = 0.0,
    duplicates: float = 0.0,
    late: float = 0.0,
    late_delay: float | str = 50.0,
    clock_skew: float | str = 0.0,
    truth: Path | None = None,
    truth_window: float | str = 10.0,
    kinds: str | None = None,
    failure_rate: float = 0.5,
    failures: Path | None = None,
    region: str | None = None,
    real_host: bool = False,
) -> int:
    """Run a simulated fleet against ``target`` and report progress until done or Ctrl-C.

    A progress line (sent, acknowledged, errors, rate) is updated every second
    in place when stdout is a terminal, or printed as a plain line every 5 s
    otherwise (logs, CI); a summary follows at the end. The first Ctrl-C stops
    cleanly: the loop stops, queued messages are sent (for up to 10 s), the
    summary is printed. A second Ctrl-C gives up on sending them.

    Args:
        devices: how many devices to simulate, dealt round-robin over the kinds
            (thermostat, barometer, hygrometer, heart rate meter, host monitor).
        rate: messages per device per second for the typed kinds; host monitors
            send a heartbeat every 15/rate s and a temperature every 3/rate s.
        target: where to send: ``http://HOST:PORT`` (POSTs JSON arrays to
            ``/api/v1/telemetry``), ``mqtt://HOST:PORT[/prefix]`` (one QoS 1 message per device
            and batch to ``<prefix>/<id>/telemetry``) or ``kafka://HOST:PORT[/topic]`` (keyed by
            device id). None: an MQTT target from ``MQTT_HOST`` & co (the Flask simulator's
            names, see :func:`~fleetstream.simulator.brokers.target_from_env`), else
            ``http://127.0.0.1:8000``.
        duration: seconds to run; None runs until Ctrl-C.
        seed: makes the run (ids, schedule, values, clock skews, delivery picks)
            repeatable; None draws one, printed at the start.
        batch: most messages per request.
        jitter: each message is sent 0..jitter after it was generated (event time
            unchanged), so arrivals are out of order; seconds or ``500ms``, ``2s``, ``1m``.
        duplicates: fraction of messages sent a second time (same payload and msg_id), 0.1-1 s later.
        late: fraction of messages held back for ``late_delay`` (the server must count them late).
        late_delay: how long late messages are held; more than the server's
            out-of-orderness + smallest window + allowed lateness (5 s + 10 s + 30 s) + ``jitter``.
        clock_skew: each device's clock is off by a fixed offset drawn in [-clock_skew, +clock_skew].
        truth: write the ground truth (distinct readings and late ones per sensor
            and event-time window) to this file: CSV if it ends in ``.csv``, else JSON.
            Rewritten every 5 s while running, and at the end.
        truth_window: the truth's window size.
        kinds: which kinds of device, ``thermostat,tracker,host`` or with weights ``thermostat=3,host=1``;
            None: every kind equally.
        failure_rate: degradations per device-hour (each ends in a failure or a recovery).
        failures: write each degradation (degraded_at, failing_at, failed_at, recovered_at)
            to this file: CSV if it ends in ``.csv``, else JSON lines. Rewritten every 5 s and at the end.
        region: where trackers move, ``south,west,north,east`` in degrees.
        real_host: add one device, ``host-<hostname>``, reporting this machine's real CPU load,
            memory, temperatures and fans (psutil), sampled every 1/rate s (1 to 10 s).

    Returns:
        The exit code: 0 when every message was acknowledged, 1 when some were
        rejected, undeliverable or dropped, 2 for bad options or target.
    """
    console = Console()
    errors = Console(stderr=True)
    if target is None:
        target = target_from_env(os.environ) or DEFAULT_TARGET
    try:
        if devices < 1:
            msg = f"--devices must be at least 1, got {devices}"
            raise ConfigError(msg)
        if batch < 1:
            msg = f"--batch must be at least 1, got {batch}"
            raise ConfigError(msg)
        if duration is not None and not duration > 0:
            msg = f"--duration must be positive (or left out to run until Ctrl-C), got {duration}"
            raise ConfigError(msg)
        options = DeliveryOptions(
            jitter_s=parse_duration(jitter, "--jitter"),
            duplicates=duplicates,
            late=late,
            late_delay_s=parse_duration(late_delay, "--late-delay"),
        )
        skew_s = parse_duration(clock_skew, "--clock-skew")
        ground = None if truth is None else GroundTruth(parse_duration(truth_window, "--truth-window"))
        weights = None if kinds is None else parse_kinds(kinds)
        life = LifecycleOptions(failure_rate=failure_rate)
        box = None if region is None else Region.parse(region)
        transport = transport_for(target)
        simulator = Simulator(
            devices,
            rate,
            seed,
            SystemClock(),
            transport,
            batch_size=batch,
            delivery=options,
            clock_skew_s=skew_s,
            truth=ground,
            kinds=weights,
            lifecycle=life,
            region=box,
            real_host=real_host_for(rate) if real_host else None,
        )
        if failures is not None:
            try:
                write_failures(failures, [])  # fail now, not after the run
            except OSError as exc:
                msg = f"--failures: cannot write {failures}: {exc.strerror or exc}"
                raise ConfigError(msg) from None
        recorder = None
        if truth is not None and ground is not None:
            meta = _truth_meta(simulator, target, options, skew_s)
            recorder = _Truth(truth, ground, meta)
            try:
                recorder.write(simulator, complete=False)  # fail now, not after the run
            except OSError as exc:
                msg = f"--truth: cannot write {truth}: {exc.strerror or exc}"
                raise ConfigError(msg) from None
    except ConfigError as exc:
        errors.print(f"error: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_CONFIG
    too_soon = _SERVER_OUT_OF_ORDER_S + _SERVER_WINDOW_S + _SERVER_LATENESS_S + options.jitter_s
    if options.late and options.late_delay_s < too_soon:
        errors.print(
            f"warning: --late-delay {options.late_delay_s:g} s may be too short for a server to count "
            f"held messages late: its default out-of-orderness ({_SERVER_OUT_OF_ORDER_S:g} s) + smallest "
            f"window ({_SERVER_WINDOW_S:g} s) + allowed lateness ({_SERVER_LATENESS_S:g} s) + --jitter "
            f"make {too_soon:g} s",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    console.print(
        f"simulating {devices:,} devices at {rate:g} msg/s each "
        + ("" if simulator.real_host is None else f"(+ {simulator.real_host.device_id}, this machine) ")
        + f"(~{simulator.fleet.messages_per_s:,.0f} msg/s in all) → {target}"
        + ("" if duration is None else f" for {duration:g} s")
        + f"; seed {simulator.seed}"
        + _knobs(options, skew_s)
        + "; Ctrl-C stops",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    outcome = _Outcome()
    try:
        asyncio.run(_drive(simulator, duration, console, outcome, recorder, failures))
    except KeyboardInterrupt:  # Ctrl-C before the loop took over the signal
        outcome.interrupted = True
    if failures is not None:
        rows = failure_rows(simulator.fleet)
        try:
            write_failures(failures, rows)
        except OSError as exc:
            errors.print(f"error: --failures: cannot write {failures}: {exc}", markup=False, highlight=False)
            return EXIT_UNDELIVERED
        failed = sum(r["failed_at"] is not None for r in rows)
        console.print(f"failures: {len(rows):,} degraded, {failed:,} failed → {failures}", markup=False)
    if recorder is not None:
        try:
            recorder.write(simulator, complete=True)
        except OSError as exc:
            errors.print(f"error: --truth: cannot write {truth}: {exc}", markup=False, highlight=False)
            return EXIT_UNDELIVERED
        console.print(
            f"ground truth: {recorder.truth.readings:,} readings ({recorder.truth.late_readings:,} late) "
            f"in {len(recorder.truth.rows()):,} windows of {recorder.truth.window_us / 1e6:g} s → {truth}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    _summary(simulator, outcome, console)
    return EXIT_OK if simulator.errors == simulator.dropped == 0 else EXIT_UNDELIVERED
