"""``fleetstream simulate``: run a simulated fleet against a server, with a progress line.

The typer app wires :func:`simulate` to its options; this module knows
nothing of typer, so it can be called (and tested) as a plain function.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.text import Text

from fleetstream.domain.clock import SystemClock
from fleetstream.errors import ConfigError
from fleetstream.simulator.simulator import Simulator
from fleetstream.simulator.transports import transport_for

EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_CONFIG = 2
_PLAIN_EVERY_S = 5


@dataclass(slots=True)
class _Outcome:
    elapsed_s: float = 0.0
    interrupted: bool = False


def simulate(
    devices: int, rate: float, target: str, duration: float | None, seed: int | None, batch: int
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
            ``/api/v1/telemetry``). ``mqtt://`` and ``kafka://`` arrive in a later version.
        duration: seconds to run; None runs until Ctrl-C.
        seed: makes the fleet (ids, schedule, values) repeatable; None draws a new one.
        batch: most messages per request.

    Returns:
        The exit code: 0 when every message was acknowledged, 1 when some were
        rejected, undeliverable or dropped, 2 for bad options or target.
    """
    console = Console()
    errors = Console(stderr=True)
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
        transport = transport_for(target)
        simulator = Simulator(devices, rate, seed, SystemClock(), transport, batch_size=batch)
    except ConfigError as exc:
        errors.print(f"error: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_CONFIG

    console.print(
        f"simulating {devices:,} devices at {rate:g} msg/s each "
        f"(~{simulator.fleet.messages_per_s:,.0f} msg/s in all) → {target}"
        + ("" if duration is None else f" for {duration:g} s")
        + "; Ctrl-C stops",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    outcome = _Outcome()
    try:
        asyncio.run(_drive(simulator, duration, console, outcome))
    except KeyboardInterrupt:  # Ctrl-C before the loop took over the signal
        outcome.interrupted = True
    _summary(simulator, outcome, console)
    return EXIT_OK if simulator.errors == simulator.dropped == 0 else EXIT_UNDELIVERED


async def _drive(simulator: Simulator, duration: float | None, console: Console, outcome: _Outcome) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = asyncio.Event()
    main = asyncio.current_task()

    def on_interrupt() -> None:
        outcome.interrupted = True
        if stop.is_set() and main is not None:
            main.cancel()  # the second Ctrl-C: stop waiting for the flush
        stop.set()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    live = Live(Text(""), console=console, auto_refresh=False) if console.is_terminal else None
    run = asyncio.create_task(simulator.run(duration), name="fleetstream-simulate")
    stopped = asyncio.create_task(stop.wait())
    report = asyncio.create_task(_report(simulator, console, live, started))
    try:
        with live if live is not None else contextlib.nullcontext():
            await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
            run.cancel()  # a no-op when the duration is over; else stop (and flush) now
            with contextlib.suppress(asyncio.CancelledError):
                await run
            report.cancel()
            if live is not None:
                live.update(Text(_progress(simulator, loop.time() - started)), refresh=True)
    except asyncio.CancelledError:
        outcome.interrupted = True
    finally:
        for task in (stopped, report):
            task.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        outcome.elapsed_s = loop.time() - started


async def _report(simulator: Simulator, console: Console, live: Live | None, started: float) -> None:
    loop = asyncio.get_running_loop()
    seconds = 0
    while True:
        await asyncio.sleep(1.0)
        seconds += 1
        line = _progress(simulator, loop.time() - started)
        if live is not None:
            live.update(Text(line), refresh=True)
        elif seconds % _PLAIN_EVERY_S == 0:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _progress(simulator: Simulator, elapsed_s: float) -> str:
    line = (
        f"{elapsed_s:6.0f} s  sent {simulator.sent:,}  acknowledged {simulator.acknowledged:,}  "
        f"errors {simulator.errors:,}  rate {simulator.rate:,.0f} msg/s"
    )
    if simulator.dropped:
        line += f"  dropped {simulator.dropped:,}"
    return line


def _summary(simulator: Simulator, outcome: _Outcome, console: Console) -> None:
    elapsed = max(outcome.elapsed_s, 1e-9)
    how = "interrupted" if outcome.interrupted else "done"
    console.print(
        f"{how} after {outcome.elapsed_s:.1f} s: {len(simulator.fleet):,} devices, "
        f"sent {simulator.sent:,}, acknowledged {simulator.acknowledged:,}, errors {simulator.errors:,}, "
        f"dropped {simulator.dropped:,}; mean {simulator.acknowledged / elapsed:,.0f} msg/s acknowledged",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
