"""What the window processor is configured with and what it hands out.

:class:`WindowSettings` says how windows are cut and closed,
:class:`WindowAggregate` is one window of one series, :class:`LateReadings`
the readings that came too late for a window, and :class:`WindowOutput` what a
batch or a timer tick produced. The rules that decide them are in
:mod:`fleetstream.domain.windows`, which exports every name here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleetstream.domain.sketch import QuantileSketch

ALL_DEVICES = "*"
"""The device id of a sensor's windows over the whole fleet (no real device can have it)."""
I64_MIN = -(2**63)  # the int64 range: an empty window's last_ts and first_ts, a free slot's end
I64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """How windows are cut and closed; all times in microseconds.

    Example:
        >>> WindowSettings(sizes_us=(10_000_000, 15_000_000))
        Traceback (most recent call last):
        ...
        ValueError: window sizes must be multiples of the smallest (10000000 us), got 15000000
    """

    sizes_us: tuple[int, ...] = (10_000_000, 60_000_000)
    out_of_orderness_us: int = 5_000_000
    allowed_lateness_us: int = 30_000_000
    idle_timeout_us: int = 10_000_000
    max_ahead_us: int = 5_000_000
    relative_accuracy: float = 0.01

    def __post_init__(self) -> None:
        sizes = self.sizes_us
        if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
            msg = f"window sizes must be positive integers (microseconds), got {sizes!r}"
            raise ValueError(msg)
        if list(sizes) != sorted(set(sizes)):
            msg = f"window sizes must be listed from the smallest up, without repeats, got {sizes!r}"
            raise ValueError(msg)
        for s in sizes:
            if s % sizes[0]:
                msg = f"window sizes must be multiples of the smallest ({sizes[0]} us), got {s}"
                raise ValueError(msg)
        for name in ("out_of_orderness_us", "allowed_lateness_us", "max_ahead_us"):
            if getattr(self, name) < 0:
                msg = f"{name} must be zero or more, got {getattr(self, name)}"
                raise ValueError(msg)
        if self.idle_timeout_us <= 0:
            msg = f"idle_timeout_us must be positive, got {self.idle_timeout_us}"
            raise ValueError(msg)
        if not 1e-6 <= self.relative_accuracy < 1.0:  # finer, and (slot, bucket) pairs outgrow int64
            msg = f"relative_accuracy must be at least 1e-6 and below 1, got {self.relative_accuracy}"
            raise ValueError(msg)


@dataclass(slots=True)
class WindowAggregate:
    """The aggregates of one window of one series (``device_id`` is ``"*"`` for the fleet).

    ``m2`` is the sum of squared deviations from the mean (numerically stable
    for readings far from zero with a small spread).

    Example:
        >>> w = WindowAggregate("temperature", "d1", 10_000_000, 0)
        >>> for ts, v in [(2, 20.0), (1, 22.0), (2, 21.0)]:
        ...     w.add(v, ts)
        >>> w.end, w.count, w.mean, w.stddev, w.first, w.last
        (10000000, 3, 21.0, 1.0, 22.0, 21.0)
    """

    sensor: str
    device_id: str
    size_us: int
    start: int
    count: int = 0
    sum: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    first: float = math.nan
    first_ts: int = I64_MAX
    last: float = math.nan
    last_ts: int = I64_MIN
    sketch: QuantileSketch = field(default_factory=QuantileSketch)
    version: int = 0

    @property
    def end(self) -> int:
        """Exclusive end of the window (event time)."""
        return self.start + self.size_us

    @property
    def mean(self) -> float | None:
        """Mean value; ``None`` when empty."""
        return self.sum / self.count if self.count else None

    @property
    def stddev(self) -> float | None:
        """Sample standard deviation; ``None`` below two values."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else None

    def quantile(self, q: float) -> float | None:
        """The lower ``q``-quantile, within the sketch's relative accuracy."""
        return self.sketch.quantile(q)

    def add(self, value: float, ts: int) -> None:
        """Fold in one reading (``ts`` inside the window; arrival order decides ties).

        A convenience for one reading at a time: :class:`WindowProcessor` folds whole columns.
        """
        self.merge(_single(self, value, ts))

    def merge(self, other: WindowAggregate) -> None:
        """Fold in a partial aggregate of the same window (Chan et al. for ``m2``).

        Exact for count, sum, min, max, first and last (``other`` counts as the
        later arrival on equal event times); quantiles merge within the
        sketch's accuracy. ``version`` is left as it is.
        """
        if (other.sensor, other.device_id, other.size_us, other.start) != (
            self.sensor,
            self.device_id,
            self.size_us,
            self.start,
        ):
            msg = "can only merge aggregates of the same window, sensor and device"
            raise ValueError(msg)
        if other.count == 0:
            return
        n = self.count + other.count
        delta = other.sum / other.count - (self.sum / self.count if self.count else 0.0)
        self.m2 += other.m2 + (delta * delta * self.count * other.count / n if self.count else 0.0)
        self.count = n
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if other.first_ts < self.first_ts:
            self.first, self.first_ts = other.first, other.first_ts
        if other.last_ts >= self.last_ts:
            self.last, self.last_ts = other.last, other.last_ts
        self.sketch.merge(other.sketch)

    def as_dict(self) -> dict[str, Any]:
        """JSON view (times in microseconds since the epoch)."""
        size_s = self.size_us // 1_000_000 if self.size_us % 1_000_000 == 0 else self.size_us / 1e6
        p50, p95, p99 = self.sketch.quantiles([0.5, 0.95, 0.99])
        empty = self.count == 0
        return {
            "sensor": self.sensor,
            "device_id": self.device_id,
            "size_s": size_s,
            "start": self.start,
            "end": self.end,
            "count": self.count,
            "sum": self.sum,
            "mean": self.mean,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
            "stddev": self.stddev,
            "first": None if empty else self.first,
            "last": None if empty else self.last,
            "p50": p50,
            "p95": p95,
            "p99": p99,
            "version": self.version,
        }

    def to_state(self) -> list[Any]:
        """Every field as builtins, in declaration order (the sketch as its own state)."""
        return [
            self.sensor,
            self.device_id,
            self.size_us,
            self.start,
            self.count,
            self.sum,
            self.m2,
            self.min,
            self.max,
            self.first,
            self.first_ts,
            self.last,
            self.last_ts,
            self.sketch.to_state(),
            self.version,
        ]

    @classmethod
    def from_state(cls, state: list[Any]) -> WindowAggregate:
        """The aggregate :meth:`to_state` described."""
        sensor, device_id, size_us, start, count, total, m2, low, high, first, first_ts, last, last_ts = (
            state[:13]
        )
        sketch = QuantileSketch.from_state(state[13])
        return cls(
            sensor, device_id, size_us, start, count, total, m2, low, high, first, first_ts, last, last_ts,
            sketch, state[14],
        )  # fmt: skip


def _single(like: WindowAggregate, value: float, ts: int) -> WindowAggregate:
    sketch = QuantileSketch(like.sketch.relative_accuracy)
    sketch.add(value)
    return WindowAggregate(
        like.sensor, like.device_id, like.size_us, like.start, 1, value, 0.0, value, value,
        value, ts, value, ts, sketch,
    )  # fmt: skip


@dataclass(slots=True)
class LateReadings:
    """Readings too late for a window size, one list per column (a reading once per size it missed)."""

    device_id: list[str] = field(default_factory=list)
    sensor: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    received_at: list[int] = field(default_factory=list)
    size_us: list[int] = field(default_factory=list)
    window_start: list[int] = field(default_factory=list)
    late_by_us: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def extend(self, other: LateReadings) -> None:
        """Append the rows of ``other``."""
        for name in _LATE_COLUMNS:
            getattr(self, name).extend(getattr(other, name))

    def take(self, rows: Iterable[int]) -> LateReadings:
        """The given rows, in that order."""
        picked = list(rows)
        out = LateReadings()
        for name in _LATE_COLUMNS:
            column = getattr(self, name)
            setattr(out, name, [column[i] for i in picked])
        return out


_LATE_COLUMNS = (
    "device_id", "sensor", "ts", "value", "seq", "received_at", "size_us", "window_start", "late_by_us",
)  # fmt: skip


@dataclass(slots=True)
class WindowOutput:
    """What a batch or a timer tick produced: windows (new versions) and readings too late."""

    windows: list[WindowAggregate] = field(default_factory=list)
    late: LateReadings = field(default_factory=LateReadings)
