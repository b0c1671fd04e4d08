"""``fleetstream simulate`` while it runs: driving the simulator, its progress line and summary.

:func:`_drive` runs the simulator until its duration is over or Ctrl-C, with a progress line
(live on a terminal, every few seconds otherwise) and the ground truth and failure files
written as it goes; :func:`_summary` prints the closing line. The command's options and its
set-up are in :mod:`~fleetstream.simulator.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from fleetstream.simulator.delivery import DeliveryOptions
from fleetstream.simulator.failures import failure_rows, write_failures
from fleetstream.simulator.simulator import Simulator
from fleetstream.simulator.truth import GroundTruth, write_truth

_PLAIN_EVERY_S = 5
_TRUTH_EVERY_S = 5
_COUNTERS = ("sent", "acknowledged", "errors", "dropped", "duplicates_sent", "late_sent", "late_unsent")


@dataclass(slots=True)
class _Outcome:
    elapsed_s: float = 0.0
    interrupted: bool = False


@dataclass(slots=True)
class _Truth:
    """The ground truth of a run and where it goes."""

    path: Path
    truth: GroundTruth
    meta: dict[str, Any]

    def write(self, simulator: Simulator, *, complete: bool) -> None:
        self.meta["counters"] = {name: getattr(simulator, name) for name in _COUNTERS}
        write_truth(self.path, self.truth, self.meta, complete=complete)


async def _drive(
    simulator: Simulator,
    duration: float | None,
    console: Console,
    outcome: _Outcome,
    recorder: _Truth | None,
    failures: Path | None,
) -> None:
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
    report = asyncio.create_task(_report(simulator, console, live, started, recorder, failures))
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


async def _report(
    simulator: Simulator,
    console: Console,
    live: Live | None,
    started: float,
    recorder: _Truth | None,
    failures: Path | None,
) -> None:
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
        if recorder is not None and seconds % _TRUTH_EVERY_S == 0:
            try:
                recorder.write(simulator, complete=False)
            except OSError as exc:  # a full disk, say: keep simulating, the final write will tell
                console.print(f"warning: --truth: {exc}", markup=False, highlight=False)
        if failures is not None and seconds % _TRUTH_EVERY_S == 0:
            try:
                write_failures(failures, failure_rows(simulator.fleet))
            except OSError as exc:
                console.print(f"warning: --failures: {exc}", markup=False, highlight=False)


def _knobs(options: DeliveryOptions, skew_s: float) -> str:
    parts = []
    if options.jitter_s:
        parts.append(f"jitter {options.jitter_s:g} s")
    if options.duplicates:
        parts.append(f"duplicates {options.duplicates:.2%}")
    if options.late:
        parts.append(f"late {options.late:.2%} (held {options.late_delay_s:g} s)")
    if skew_s:
        parts.append(f"clock skew ±{skew_s:g} s")
    return "; " + ", ".join(parts) if parts else ""


def _truth_meta(simulator: Simulator, target: str, options: DeliveryOptions, skew_s: float) -> dict[str, Any]:
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "target": target,
        "seed": simulator.seed,
        "devices": len(simulator.fleet),
        "rate": simulator.device_rate,
        "options": {
            "jitter_s": options.jitter_s,
            "duplicates": options.duplicates,
            "late": options.late,
            "late_delay_s": options.late_delay_s,
            "clock_skew_s": skew_s,
        },
    }


def _progress(simulator: Simulator, elapsed_s: float) -> str:
    line = (
        f"{elapsed_s:6.0f} s  sent {simulator.sent:,}  acknowledged {simulator.acknowledged:,}  "
        f"errors {simulator.errors:,}  rate {simulator.rate:,.0f} msg/s"
    )
    options = simulator.delivery.options
    if options.duplicates:
        line += f"  duplicates {simulator.duplicates_sent:,}"
    if options.late:
        line += f"  late {simulator.late_sent:,} (+{simulator.delivery.held_late:,} held)"
    if simulator.dropped:
        line += f"  dropped {simulator.dropped:,}"
    return line


def _summary(simulator: Simulator, outcome: _Outcome, console: Console) -> None:
    elapsed = max(outcome.elapsed_s, 1e-9)
    how = "interrupted" if outcome.interrupted else "done"
    sent = f"sent {simulator.sent:,}"
    if simulator.delivery.options.active:
        sent += (
            f" (duplicates {simulator.duplicates_sent:,}, late {simulator.late_sent:,}, "
            f"held late at the end and not sent {simulator.late_unsent:,})"
        )
    console.print(
        f"{how} after {outcome.elapsed_s:.1f} s: {len(simulator.fleet):,} devices, "
        f"{sent}, acknowledged {simulator.acknowledged:,}, errors {simulator.errors:,}, "
        f"dropped {simulator.dropped:,}; mean {simulator.acknowledged / elapsed:,.0f} msg/s acknowledged",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
