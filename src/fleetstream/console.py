"""The terminal view of ``fleetstream up``: running metrics per sensor and the ingest rate."""

from __future__ import annotations

import asyncio
import math
import sys

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fleetstream.runtime import Runtime


def _num(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "–"
    return f"{value:,.2f}"


def render(runtime: Runtime, url: str) -> Table:
    """The table of running metrics, one row per sensor."""
    engine = runtime.engine
    rate = engine.rate.rate(runtime.clock.monotonic())
    title = (
        f"fleetstream at {url} · {rate:,.0f} readings/s · {engine.stats.readings_total:,} readings · "
        f"{len(engine.stats.device_ids):,} devices · {engine.dedup.duplicates_total:,} duplicates"
    )
    table = Table(title=title, title_justify="left", expand=False)
    for name, justify in (
        ("sensor", "left"),
        ("count", "right"),
        ("mean", "right"),
        ("min", "right"),
        ("max", "right"),
        ("last", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for sensor, s in sorted(engine.stats.sensors.items()):
        table.add_row(sensor, f"{s.count:,}", _num(s.mean), _num(s.min), _num(s.max), _num(s.last))
    if not engine.stats.sensors:
        table.add_row("(waiting for readings)", "", "", "", "", "")
    return table


async def show_live_table(runtime: Runtime, url: str, stop: asyncio.Event, console: Console) -> None:
    """Refresh the table every second until ``stop`` is set.

    On a terminal the table redraws in place; otherwise (logs, CI) one summary
    line is printed every 10 s.
    """
    if not console.is_terminal:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 10)
            except TimeoutError:
                engine = runtime.engine
                rate = engine.rate.rate(runtime.clock.monotonic())
                print(
                    f"fleetstream: {rate:,.0f} readings/s, {engine.stats.readings_total:,} readings",
                    file=sys.stderr,
                    flush=True,
                )
        return
    with Live(render(runtime, url), console=console, refresh_per_second=1, transient=False) as live:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1)
            except TimeoutError:
                live.update(render(runtime, url))
