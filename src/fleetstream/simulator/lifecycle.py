"""Device lifecycles: each simulated device is a small state machine, driven by seeded draws.

::

    off → starting → running ↔ degraded → failing → failed → maintenance → running
                     running → offline → running
                     running → maintenance → running

A device leaves ``running`` for ``degraded`` at ``failure_rate`` per
device-hour (and for ``offline`` or ``maintenance`` at their own rates). A
degraded device either recovers (back to ``running``) or goes on to
``failing``, then ``failed``; while degraded and failing its *severity*
ramps from 0 to 1, which the fleet turns into precursors in the data. A
failed device stops sending (no flatline: silence is what a dead host
sends) until it is repaired (``maintenance``, then ``running``).

Every device has one pending transition at a time, drawn when it entered its
state, and transitions are applied in time order, so the same seed gives the
same transitions however the calls split time. Pure logic: time comes in as
seconds since the fleet started.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

from fleetstream.errors import ConfigError

OFF, STARTING, RUNNING, DEGRADED, FAILING, FAILED, MAINTENANCE, OFFLINE = range(8)
STATES = ("off", "starting", "running", "degraded", "failing", "failed", "maintenance", "offline")
"""State names, indexed by the state numbers above."""
SILENT = frozenset({OFF, FAILED, MAINTENANCE, OFFLINE})
"""States in which a device sends nothing."""


@dataclass(frozen=True, slots=True)
class LifecycleOptions:
    """Rates (per device-hour) and durations (seconds, drawn uniformly in ``(low, high)``).

    Failures are on by default (0.5 per device-hour: a fleet of 100 shows one
    every minute or so, each after minutes of precursors); going offline and
    maintenance are off unless asked for, so a short run sends every message.

    Attributes:
        failure_rate: running → degraded.
        offline_rate: running → offline (the device stops sending, then comes back).
        maintenance_rate: running → maintenance (planned; stops sending).
        recover_chance: chance that a degraded device recovers instead of failing.
        starting_s: how long a device takes to start.
        degraded_s: how long a device stays degraded (its precursors build up meanwhile).
        failing_s: how long a device is failing before it fails.
        repair_s: how long a failed device stays failed before maintenance.
        offline_s: how long an offline device stays away.
        maintenance_s: how long maintenance takes.
    """

    failure_rate: float = 0.5
    offline_rate: float = 0.0
    maintenance_rate: float = 0.0
    recover_chance: float = 0.2
    starting_s: tuple[float, float] = (1.0, 5.0)
    degraded_s: tuple[float, float] = (120.0, 480.0)
    failing_s: tuple[float, float] = (60.0, 180.0)
    repair_s: tuple[float, float] = (600.0, 1800.0)
    offline_s: tuple[float, float] = (30.0, 300.0)
    maintenance_s: tuple[float, float] = (60.0, 600.0)

    def __post_init__(self) -> None:
        for name in ("failure_rate", "offline_rate", "maintenance_rate"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                msg = f"{name} must be a finite rate >= 0 per device-hour, got {value}"
                raise ConfigError(msg)
        if not 0 <= self.recover_chance <= 1:
            msg = f"recover_chance must be in [0, 1], got {self.recover_chance}"
            raise ConfigError(msg)


@dataclass(slots=True)
class Transition:
    """A device changed state at ``at_s`` seconds since the fleet started."""

    device: int
    at_s: float
    old: int
    new: int


@dataclass(slots=True)
class Episode:
    """One degradation of one device: the ground truth a failure predictor is scored against.

    Times are seconds since the fleet started; None until reached.
    """

    device: int
    degraded_at_s: float
    failing_at_s: float | None = None
    failed_at_s: float | None = None
    recovered_at_s: float | None = None


class Lifecycles:
    """The states of ``n`` devices and their pending transitions.

    Example:
        >>> life = Lifecycles(2, LifecycleOptions(failure_rate=0), random.Random(1))
        >>> [STATES[t.new] for t in life.advance(10.0)]
        ['starting', 'starting', 'running', 'running']
        >>> life.severity(0, 10.0)
        0.0
    """

    def __init__(self, n: int, options: LifecycleOptions, rng: random.Random) -> None:
        self.options = options
        self.rng = rng
        self.state = [OFF] * n
        self.entered_s = [0.0] * n
        self.length_s = [0.0] * n  # planned stay in the current state
        self.episodes: list[Episode] = []
        self._open: dict[int, Episode] = {}
        self._pending: list[tuple[float, int, int]] = [
            (0.0, i, STARTING) for i in range(n)
        ]  # (at, device, to)

    def __len__(self) -> int:
        return len(self.state)

    def sending(self, device: int) -> bool:
        """Whether the device sends in its current state."""
        return self.state[device] not in SILENT

    def severity(self, device: int, now_s: float) -> float:
        """How far gone a device is: 0 while healthy, ramping to 0.5 while degraded, to 1 while failing."""
        state = self.state[device]
        if state not in (DEGRADED, FAILING):
            return 0.0
        length = self.length_s[device]
        part = min(1.0, max(0.0, (now_s - self.entered_s[device]) / length)) if length > 0 else 1.0
        return 0.5 * part if state == DEGRADED else 0.5 + 0.5 * part

    def force(self, device: int, state: int, now_s: float) -> Transition:
        """Put a device in ``state`` now (a test, or an operator), drawing its next transition."""
        self._pending = [p for p in self._pending if p[1] != device]
        heapq.heapify(self._pending)
        return self._enter(device, state, now_s)

    def add(self, n: int, now_s: float) -> range:
        """Add ``n`` devices, off and starting at ``now_s``; their numbers."""
        first = len(self.state)
        self.state.extend([OFF] * n)
        self.entered_s.extend([now_s] * n)
        self.length_s.extend([0.0] * n)
        for i in range(first, first + n):
            heapq.heappush(self._pending, (now_s, i, STARTING))
        return range(first, first + n)

    def retire(self, devices: set[int], now_s: float) -> list[Transition]:
        """Switch devices off for good (removed from the fleet): no transition is pending for them."""
        self._pending = [p for p in self._pending if p[1] not in devices]  # one pass for all
        heapq.heapify(self._pending)
        return [self._enter(device, OFF, now_s) for device in sorted(devices)]

    def advance(self, now_s: float) -> list[Transition]:
        """Apply every transition due by ``now_s`` (inclusive), in time order."""
        out: list[Transition] = []
        pending = self._pending
        while pending and pending[0][0] <= now_s:
            at, device, to = heapq.heappop(pending)
            out.append(self._enter(device, to, at))
        return out

    def _enter(self, device: int, to: int, at: float) -> Transition:
        old = self.state[device]
        self.state[device] = to
        self.entered_s[device] = at
        o, rng = self.options, self.rng
        length, after = math.inf, to
        if to == STARTING:
            length, after = rng.uniform(*o.starting_s), RUNNING
        elif to == RUNNING:
            length, after = self._running_exit()
        elif to == DEGRADED:
            length = rng.uniform(*o.degraded_s)
            after = RUNNING if rng.random() < o.recover_chance else FAILING
        elif to == FAILING:
            length, after = rng.uniform(*o.failing_s), FAILED
        elif to == FAILED:
            length, after = rng.uniform(*o.repair_s), MAINTENANCE
        elif to == MAINTENANCE:
            length, after = rng.uniform(*o.maintenance_s), RUNNING
        elif to == OFFLINE:
            length, after = rng.uniform(*o.offline_s), RUNNING
        self.length_s[device] = length
        if math.isfinite(length):
            heapq.heappush(self._pending, (at + length, device, after))
        self._record(device, old, to, at)
        return Transition(device, at, old, to)

    def _running_exit(self) -> tuple[float, int]:
        # Competing exponential clocks: the first to ring decides where the device goes.
        o = self.options
        total = o.failure_rate + o.offline_rate + o.maintenance_rate
        if total <= 0:
            return math.inf, RUNNING
        wait_s = self.rng.expovariate(total / 3600.0)
        pick = self.rng.random() * total
        if pick < o.failure_rate:
            return wait_s, DEGRADED
        if pick < o.failure_rate + o.offline_rate:
            return wait_s, OFFLINE
        return wait_s, MAINTENANCE

    def _record(self, device: int, old: int, new: int, at: float) -> None:
        if new == DEGRADED:
            episode = self._open.get(device)
            if episode is None:
                episode = self._open[device] = Episode(device, at)
                self.episodes.append(episode)
            return
        episode = self._open.get(device)
        if episode is None:
            return
        if new == FAILING and episode.failing_at_s is None:
            episode.failing_at_s = at
        elif new == FAILED:
            episode.failed_at_s = at
            del self._open[device]
        elif new != FAILING:  # back to running (or forced elsewhere) before failing
            episode.recovered_at_s = at
            del self._open[device]
