"""Time as an input: a real clock for running, a manual one for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Tells the current time in microseconds since the epoch (UTC)."""

    def now_us(self) -> int:
        """Current time, microseconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes back; for rates and timeouts."""
        ...


class SystemClock:
    """The wall clock."""

    def now_us(self) -> int:
        return time.time_ns() // 1000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to.

    >>> c = ManualClock(1_000_000)
    >>> c.advance(2.5); c.now_us()
    3500000
    """

    def __init__(self, start_us: int = 0) -> None:
        self._now = start_us
        self._mono = 0.0

    def now_us(self) -> int:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both the wall and the monotonic time forward."""
        self._now += round(seconds * 1_000_000)
        self._mono += seconds

    def set(self, now_us: int) -> None:
        """Jump the wall time (the monotonic time follows the difference, never backwards)."""
        self._mono += max(0, now_us - self._now) / 1_000_000
        self._now = now_us
