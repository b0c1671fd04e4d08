"""Generation rate of the simulator alone: can one process keep 100,000 devices at 1 msg/s?

Two parts, in one run:

1. **Capacity** (no event loop, no clock): ``Fleet.advance`` over ``--seconds`` of simulated time
   in 0.1 s ticks, timed: messages generated per CPU second, against what the fleet asks for
   per second (``Fleet.messages_per_s``). **Baseline in the same run**: the same fleet with
   failures off (``--failure-rate 0``), which is the fleet before lifecycles and precursors.
2. **Real time**: the ``Simulator`` on the system clock with a transport that drops every batch
   (``NullTransport``) for ``--seconds`` of wall time: messages generated (and "acknowledged")
   per second, as a fraction of the requested rate.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/simulator_generation.py --devices 100000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from fleetstream.domain.clock import SystemClock
from fleetstream.simulator import Fleet, Simulator
from fleetstream.simulator.lifecycle import LifecycleOptions

T0 = 1_700_000_000_000_000


class NullTransport:
    """Takes every batch at once and keeps nothing."""

    async def start(self) -> None:
        return None

    async def send(self, batch: list[dict[str, Any]]) -> None:
        return None

    async def close(self) -> None:
        return None


def capacity(devices: int, seconds: float, failure_rate: float) -> tuple[float, float]:
    """(messages per CPU second, messages per second the fleet asks for)."""
    fleet = Fleet(devices, 1.0, 1, lifecycle=LifecycleOptions(failure_rate=failure_rate))
    n, tick = 0, 0.1
    started = time.process_time()
    for i in range(round(seconds / tick) + 1):
        n += len(fleet.advance(i * tick, T0 + round(i * tick * 1e6)))
    return n / (time.process_time() - started), fleet.messages_per_s


async def real_time(devices: int, seconds: float, failure_rate: float) -> tuple[float, float, int]:
    """(generated per wall second, requested per second, dropped)."""
    sim = Simulator(
        devices,
        1.0,
        1,
        SystemClock(),
        NullTransport(),
        lifecycle=LifecycleOptions(failure_rate=failure_rate),
        batch_size=5000,
    )
    started = time.perf_counter()
    await sim.run(seconds)
    return sim.generated / (time.perf_counter() - started), sim.fleet.messages_per_s, sim.dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--failure-rate", type=float, default=LifecycleOptions().failure_rate)
    args = parser.parse_args()

    print(f"{args.devices:,} devices at 1 msg/s, {args.seconds:g} s")
    print(f"{'part':<34}{'msgs/s':>12}{'requested':>12}{'ratio':>8}")
    base, wanted = capacity(args.devices, args.seconds, 0.0)
    print(f"{'capacity, failures off (baseline)':<34}{base:>12,.0f}{wanted:>12,.0f}{base / wanted:>8.2f}")
    rate, wanted = capacity(args.devices, args.seconds, args.failure_rate)
    label = f"capacity, failure rate {args.failure_rate:g}/h"
    print(f"{label:<34}{rate:>12,.0f}{wanted:>12,.0f}{rate / wanted:>8.2f}  ({rate / base:.2f} of baseline)")
    got, wanted, dropped = asyncio.run(real_time(args.devices, args.seconds, args.failure_rate))
    label = "real time, null transport"
    print(f"{label:<34}{got:>12,.0f}{wanted:>12,.0f}{got / wanted:>8.2f}  (dropped {dropped:,})")


if __name__ == "__main__":
    main()
