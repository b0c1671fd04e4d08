"""Running metrics of one series: its count, mean, spread and newest value; a rate over the last seconds.

:class:`RunningStats` folds readings one at a time (Welford); :class:`RateMeter` counts what
happened per second and gives the mean rate over a window. Both are importable from
:mod:`fleetstream.domain.stats` as well.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class RunningStats:
    """Count, mean, min, max, standard deviation (Welford) and the newest value.

    "Newest" is by event time: a reading that arrives late does not replace a
    newer one as ``last``.

    Example:
        >>> s = RunningStats()
        >>> for ts, v in [(1, 2.0), (3, 4.0), (2, 9.0)]:
        ...     s.add(v, ts)
        >>> s.count, s.mean, s.min, s.max, s.last
        (3, 5.0, 2.0, 9.0, 4.0)
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    last: float = math.nan
    last_ts: int = -(2**62)

    def add(self, value: float, ts: int) -> None:
        """Fold one value in."""
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if ts >= self.last_ts:
            self.last = value
            self.last_ts = ts

    @property
    def stddev(self) -> float | None:
        """Sample standard deviation; ``None`` below two values."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else None

    def merge(self, other: RunningStats) -> None:
        """Combine with stats of a disjoint set of values (Chan et al.)."""
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            self.min, self.max, self.last, self.last_ts = other.min, other.max, other.last, other.last_ts
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.mean += delta * other.count / total
        self.count = total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if other.last_ts >= self.last_ts:
            self.last, self.last_ts = other.last, other.last_ts

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        if self.count == 0:
            return {"count": 0, "mean": None, "min": None, "max": None, "stddev": None, "last": None}
        return {
            "count": self.count,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "stddev": self.stddev,
            "last": self.last,
            "last_ts": self.last_ts,
        }


class RateMeter:
    """Events per second over a sliding window of whole seconds (monotonic time)."""

    def __init__(self, window_s: int = 5) -> None:
        self._window = window_s
        self._buckets: deque[list[float]] = deque()

    def add(self, n: int, now: float) -> None:
        """Count ``n`` events at monotonic time ``now``."""
        second = float(int(now))
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, float(n)])
        self._trim(now)

    def rate(self, now: float) -> float:
        """Events per second over the complete seconds of the window."""
        self._trim(now)
        current = float(int(now))
        done = [n for second, n in self._buckets if second < current]
        return sum(done) / self._window if done else 0.0

    def _trim(self, now: float) -> None:
        oldest = int(now) - self._window
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
