"""Tumbling event-time windows with a watermark, allowed lateness and quantile sketches.

What a window is
    Windows are tumbling and aligned to the Unix epoch: a window of size ``S``
    covers event times ``[k*S, (k+1)*S)``. Every configured size (default 10 s
    and 1 min) is computed for each sensor over the whole fleet (device id
    ``"*"``, which no real device can have) and for each (device, sensor).
    A window holds count, sum, mean, sample standard deviation, min, max, the
    first and last value by event time (on equal event times the earlier
    arrival is ``first`` and the later arrival is ``last``) and a quantile
    sketch: p50, p95 and p99 are the *lower* rank quantiles (the value at
    index ``floor(q * (n - 1))`` of the sorted values) within 1% relative
    error by default. All times are integer microseconds since the epoch (UTC).

The watermark
    The watermark says "event time up to here is complete". It is computed
    reading by reading, in log order: before reading ``i`` it is
    ``max(previous watermark, max(clamped_ts[0..i-1]) - out_of_orderness)``
    where ``clamped_ts = min(ts, received_at + max_ahead)``: a device whose
    clock runs ahead cannot push the watermark past real time. Only the log
    decides it, so replaying the log after a crash, cut into other batches,
    gives the same windows.

On time, late, too late
    For a reading and a window ``[start, end)`` that holds it, with ``wm`` the
    watermark before that reading:

    - ``wm < end``: the window is open; the reading is added.
    - ``end <= wm < end + allowed_lateness``: the window was already emitted
      (or is due); the reading is added and the window is emitted again as a
      new ``version``.
    - ``wm >= end + allowed_lateness``: the reading is *late* for that window
      size. It is not added; it is reported in the output's ``late`` columns
      with ``late_by_us = wm - end`` (how far the watermark had passed the
      window's end, at least ``allowed_lateness``), once per size it is late
      for, and counted once per sensor in ``late_total`` (late for a bigger
      size implies late for the smallest).

Emission
    After each batch and each timer tick, every window with ``end <= wm`` that
    was not emitted yet, or changed since, is emitted once with ``version``
    1, 2, 3...; windows are ordered by end, size, sensor and device. A window
    with ``end + allowed_lateness <= wm`` is final: it leaves memory and its
    last version stands. Empty windows are never emitted. The final contents
    of a window do not depend on how the log was cut into batches; the number
    of versions on the way may.

Idle partitions
    When no reading has arrived for ``idle_timeout`` of wall-clock time, the
    timer moves the watermark with the wall clock (``now - out_of_orderness``)
    so the last windows of a quiet partition still close. After a start or a
    restore the idle clock starts at the first timer tick. Readings that
    arrive after the clock moved the watermark are judged against it.

Restarts
    ``snapshot()`` holds the watermark, the late counts and every window still
    in memory (exact sums, sketches); a processor restored from it and fed the
    rest of the log emits what the uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np

from fleetstream.domain.sketch import QuantileSketch, bucket_keys, max_bucket_key, merge_bucket_lists

ALL_DEVICES = "*"
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
_LINE_SPAN = 1 << 28  # window key = u * _LINE_SPAN + line, where line = series * sizes + size index
_U_FAST = 1 << 34  # |u| below this keeps the key inside int64
_EMPTY = np.zeros(0, np.int64)


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
    first_ts: int = _I64_MAX
    last: float = math.nan
    last_ts: int = _I64_MIN
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


class _Group:
    """The windows of one size and start, across series: they all fall due at the same watermark.

    Their sketches are one column of (slot, bucket key) pairs packed into int64,
    sorted and counted now and then, not one sketch object per window updated
    reading by reading; a window's sketch is a slice of it.
    """

    __slots__ = ("_keys", "counts", "dirty", "emitted", "end", "j", "packed", "pending", "raw")

    def __init__(self, j: int, end: int, *, emitted: bool = False) -> None:
        self.j = j  # size index
        self.end = end
        self.emitted = emitted
        self.dirty = False  # a window changed after the group was emitted
        self.raw: list[np.ndarray] = []  # packed pairs, one per reading
        self.pending = 0
        self.packed = _EMPTY  # packed pairs, sorted and unique, with their counts
        self.counts = _EMPTY
        self._keys: np.ndarray | None = None

    def add(self, packed: np.ndarray) -> None:
        self.raw.append(packed)
        self.pending += len(packed)
        if self.pending > max(1 << 16, len(self.packed)):  # bounded memory, amortised cost
            self.compact()

    def add_counted(self, packed: np.ndarray, counts: np.ndarray) -> None:
        """Pairs with counts, each pair once (windows put back from a snapshot)."""
        order = np.argsort(packed, kind="stable")
        self.packed, self.counts = merge_bucket_lists(self.packed, self.counts, packed[order], counts[order])
        self._keys = None

    def compact(self) -> None:
        if self.raw:
            raw = np.sort(np.concatenate(self.raw))
            starts = np.flatnonzero(np.concatenate(([True], raw[1:] != raw[:-1])))
            counts = np.diff(np.append(starts, len(raw)))
            self.packed, self.counts = merge_bucket_lists(self.packed, self.counts, raw[starts], counts)
            self.raw, self.pending, self._keys = [], 0, None

    def sketches(self, slots: np.ndarray, totals: np.ndarray, packing: _Packing) -> list[QuantileSketch]:
        """The sketch of each given slot of this group: slices of the group's arrays, nothing copied."""
        self.compact()
        span = packing.span
        if self._keys is None:
            self._keys = self.packed - self.packed // span * span - packing.max_key
        keys, counts = self._keys, self.counts
        lo = np.searchsorted(self.packed, slots * span).tolist()
        hi = np.searchsorted(self.packed, (slots + 1) * span).tolist()
        make, alpha = QuantileSketch.from_sorted_buckets, packing.alpha
        return [
            make(keys[a:b], counts[a:b], alpha, n) for a, b, n in zip(lo, hi, totals.tolist(), strict=True)
        ]


@dataclass(frozen=True, slots=True)
class _Packing:
    """(slot, bucket key) in one int64: ``slot * span + key + max_key``."""

    alpha: float
    max_key: int
    span: int

    @classmethod
    def of(cls, alpha: float) -> _Packing:
        max_key = max_bucket_key(alpha)
        return cls(alpha, max_key, 2 * max_key + 1)


_SLOT_FIELDS: tuple[tuple[str, type, float | int | bool], ...] = (
    ("count", np.int64, 0),
    ("shift", np.float64, 0.0),  # the window's first value: sums of (value - shift) keep the variance exact
    ("s1", np.float64, 0.0),
    ("s2", np.float64, 0.0),
    ("min", np.float64, math.inf),
    ("max", np.float64, -math.inf),
    ("first", np.float64, math.nan),
    ("first_ts", np.int64, _I64_MAX),
    ("last", np.float64, math.nan),
    ("last_ts", np.int64, _I64_MIN),
    ("start", np.int64, 0),
    ("end", np.int64, _I64_MAX),  # _I64_MAX marks a free slot
    ("line", np.int64, 0),
    ("version", np.int64, 0),
    ("changed", np.bool_, False),
    ("pick", np.int64, 0),  # scratch for choosing first/last among a batch's readings
)
_STATE_FIELDS = ("start", "count", "shift", "s1", "s2", "min", "max", "first", "first_ts", "last", "last_ts")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing


class _PairIndex:
    """Non-negative int64 keys to int64 values, a whole column looked up at once (open addressing)."""

    def __init__(self, bits: int = 10) -> None:
        self._bits = bits
        self._keys = np.full(1 << bits, -1, np.int64)
        self._values = np.zeros(1 << bits, np.int64)
        self._size = 0

    def _home(self, keys: np.ndarray) -> np.ndarray:
        home: np.ndarray = ((keys.astype(np.uint64) * _GOLDEN) >> np.uint64(64 - self._bits)).astype(np.int64)
        return home

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key; -1 where there is none."""
        out = np.full(len(keys), -1, np.int64)
        todo = np.arange(len(keys))
        at = self._home(keys)
        wrap = len(self._keys) - 1
        while len(todo):  # at most half full: about 1.5 probes per key
            stored = self._keys[at]
            hit = stored == keys[todo]
            out[todo[hit]] = self._values[at[hit]]
            more = ~hit & (stored != -1)
            todo, at = todo[more], (at[more] + 1) & wrap
        return out

    def put(self, key: int, value: int) -> None:
        """Add a key that is not there yet."""
        if 2 * (self._size + 1) > len(self._keys):
            keys, values = self._keys, self._values
            self._bits += 1
            self._keys = np.full(1 << self._bits, -1, np.int64)
            self._values = np.zeros(1 << self._bits, np.int64)
            for k, v in zip(keys.tolist(), values.tolist(), strict=True):
                if k != -1:
                    self._place(k, v)
        self._place(key, value)
        self._size += 1

    def _place(self, key: int, value: int) -> None:
        wrap = len(self._keys) - 1
        at = int(self._home(np.array([key], np.int64))[0])
        while self._keys[at] != -1:
            at = (at + 1) & wrap
        self._keys[at] = key
        self._values[at] = value


class _Slots:
    """Windows in memory as parallel numpy arrays, one slot per window; freed slots are reused."""

    count: np.ndarray
    shift: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    first: np.ndarray
    first_ts: np.ndarray
    last: np.ndarray
    last_ts: np.ndarray
    start: np.ndarray
    end: np.ndarray
    line: np.ndarray
    version: np.ndarray
    changed: np.ndarray
    pick: np.ndarray

    def __init__(self, capacity: int = 1024) -> None:
        for name, dtype, fill in _SLOT_FIELDS:
            setattr(self, name, np.full(capacity, fill, dtype))
        self.used = 0  # slots 0 .. used-1 have been handed out at least once
        self.free: list[int] = []
        self.key: list[int] = [0] * capacity  # the window key of each slot in use

    def take(self, k: int) -> list[int]:
        reused = self.free[len(self.free) - min(k, len(self.free)) :]
        del self.free[len(self.free) - len(reused) :]
        fresh = k - len(reused)
        capacity = len(self.end)
        if self.used + fresh > capacity:
            size = max(self.used + fresh, 2 * capacity)
            for name, dtype, fill in _SLOT_FIELDS:
                grown: np.ndarray = np.full(size, fill, dtype)
                grown[:capacity] = getattr(self, name)
                setattr(self, name, grown)
            self.key += [0] * (size - capacity)
        self.used += fresh
        return reused + list(range(self.used - fresh, self.used))

    def alive(self) -> np.ndarray:
        return np.flatnonzero(self.end[: self.used] != _I64_MAX)

    def release(self, slots: np.ndarray) -> None:
        for name, _, fill in _SLOT_FIELDS:
            getattr(self, name)[slots] = fill
        self.free += slots.tolist()


class WindowProcessor:
    """Tumbling event-time windows of one partition (see the module docstring for the rules).

    State lives in numpy arrays, one slot per window; a batch is folded in with
    a few vectorised steps whatever its size, and Python work is done per
    window emitted, not per reading.

    Example:
        >>> p = WindowProcessor(WindowSettings(sizes_us=(10,), out_of_orderness_us=0,
        ...                                    allowed_lateness_us=5, max_ahead_us=100))
        >>> out = p.on_batch(["d1"] * 3, ["t"] * 3, [1.0, 2.0, 3.0], [1, 4, 12], [1, 4, 12], [1, 2, 3], 12)
        >>> p.watermark, [(w.device_id, w.start, w.count, w.mean, w.version) for w in out.windows]
        (12, [('*', 0, 2, 1.5, 1), ('d1', 0, 2, 1.5, 1)])
        >>> out = p.on_batch(["d1"], ["t"], [9.0], [3], [13], [4], 13)  # within the lateness: version 2
        >>> [(w.device_id, w.count, w.version) for w in out.windows]
        [('*', 3, 2), ('d1', 3, 2)]
        >>> out = p.on_batch(["d1", "d1"], ["t", "t"], [5.0, 6.0], [20, 2], [20, 20], [5, 6], 20)
        >>> out.late.ts, out.late.late_by_us, p.late_total
        ([2], [10], {'t': 1})
    """

    def __init__(self, settings: WindowSettings) -> None:
        self.settings = settings
        self._sizes = settings.sizes_us
        self._packing = _Packing.of(settings.relative_accuracy)
        self._wm: int | None = None
        self._last_input: int | None = None  # wall clock of the last batch with rows
        self.late_total: dict[str, int] = {}
        # Series: a number per (device, sensor) and per (ALL_DEVICES, sensor). Devices and sensors get
        # numbers of their own first (dict look-ups of strings, whose hashes Python caches), and the
        # pairs of a whole batch are then looked up at once, without a tuple per reading.
        self._device_no: dict[str, int] = {}
        self._sensor_no: dict[str, int] = {}
        self._pairs = _PairIndex()  # device_no << 20 | sensor_no -> series
        self._fleet: dict[str, int] = {}  # sensor -> its fleet series
        self._names: list[tuple[str, str]] = []  # series -> (sensor, device_id)
        self._fleet_of = np.zeros(64, np.int64)  # series -> its sensor's fleet series
        self._rank = _EMPTY  # series -> place in (sensor, device_id) order
        self._slot_of: dict[int, int] = {}  # window key (window number and line) -> slot
        self._slots = _Slots()
        self._groups: dict[tuple[int, int], _Group] = {}  # (size index, start // size) -> group
        # The newest window of each line (series x size): most readings land there, found without the dict.
        self._line_u = np.full(64, _I64_MIN, np.int64)
        self._line_slot = np.zeros(64, np.int64)

    @property
    def watermark(self) -> int | None:
        """Event time up to which input is taken as complete; ``None`` before any."""
        return self._wm

    def on_batch(
        self,
        device_id: list[str],
        sensor: list[str],
        value: list[float],
        ts: list[int],
        received_at: list[int],
        seq: list[int],
        now_us: int,
    ) -> WindowOutput:
        """Fold in readings given as columns in log order; returns windows now due and late readings."""
        n = len(ts)
        if not len(device_id) == len(sensor) == len(value) == len(received_at) == len(seq) == n:
            msg = "on_batch columns must all have the same length"
            raise ValueError(msg)
        if n == 0:
            return WindowOutput()
        st, packing = self.settings, self._packing
        t = np.array(ts, np.int64)
        v = np.array(value, np.float64)
        buckets = bucket_keys(v, packing.alpha)  # checks the values before any state changes
        self._last_input = now_us
        clamped = np.minimum(t, np.array(received_at, np.int64) + st.max_ahead_us)
        run = np.maximum.accumulate(clamped) - st.out_of_orderness_us
        before = _I64_MIN if self._wm is None else self._wm
        wm = np.empty(n, np.int64)  # the watermark before each row
        wm[0] = before
        np.maximum(run[:-1], before, out=wm[1:])
        self._wm = max(before, int(run[-1]))
        device = self._series_numbers(device_id, sensor)
        fleet = self._fleet_of[device]
        ns = len(self._sizes)
        lines: list[np.ndarray] = []
        us: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        late: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        blocks: list[tuple[int, int, np.ndarray]] = []  # size index, offset, window numbers of its rows
        offset = 0
        for j, size in enumerate(self._sizes):
            u = t // size
            end = (u + 1) * size
            taken = wm < end + st.allowed_lateness_us
            if taken.all():
                idx = np.arange(n)
            else:
                missed = np.flatnonzero(~taken)
                late.append((j, missed, end[missed], wm[missed]))
                idx = np.flatnonzero(taken)
                u = u[idx]
            if len(idx) == 0:
                continue
            lines += [device[idx] * ns + j, fleet[idx] * ns + j]
            us += [u, u]
            rows += [idx, idx]
            blocks.append((j, offset, u))
            offset += 2 * len(idx)
        output = WindowOutput(late=self._late(late, device_id, sensor, t, v, seq, received_at))
        if blocks:
            row = np.concatenate(rows)
            slot = self._slots_for(np.concatenate(lines), np.concatenate(us), v[row])
            self._fold(slot, v[row], t[row])
            self._feed_sketches(blocks, slot * packing.span + (buckets[row] + packing.max_key))
        output.windows = self._emit()
        return output

    def on_timer(self, now_us: int) -> WindowOutput:
        """Wall-clock tick: once input has been idle for ``idle_timeout``, the watermark follows the clock."""
        if self._last_input is None:
            self._last_input = now_us
            return WindowOutput()
        if now_us - self._last_input < self.settings.idle_timeout_us:
            return WindowOutput()
        target = now_us - self.settings.out_of_orderness_us
        if self._wm is None or target > self._wm:
            self._wm = target
        return WindowOutput(self._emit())

    def open_windows(self) -> list[WindowAggregate]:
        """Copies of the windows in memory (in progress or within the lateness), in emission order.

        ``version`` is that of the last emission (0: not emitted yet).
        """
        alive = self._in_order(self._slots.alive())
        return self._aggregates(alive, self._sketches(alive, list(self._groups.values())))

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as builtins (msgpack- and JSON-ready)."""
        S = self._slots
        alive = S.alive()
        ns = len(self._sizes)
        lines = S.line[alive].tolist()
        sketches = self._sketches(alive, list(self._groups.values()))
        windows: dict[str, list[Any]] = {
            "device_id": [self._names[x // ns][1] for x in lines],
            "sensor": [self._names[x // ns][0] for x in lines],
            "size_us": [self._sizes[x % ns] for x in lines],
            "version": S.version[alive].tolist(),
            "changed": S.changed[alive].tolist(),
            "sketch": [sketch.to_state() for sketch in sketches],
        }
        for name in _STATE_FIELDS:
            windows[name] = getattr(S, name)[alive].tolist()
        emitted = [[self._sizes[j], u * self._sizes[j]] for (j, u), g in self._groups.items() if g.emitted]
        return {
            "format": 1,
            "sizes_us": list(self._sizes),
            "relative_accuracy": self._packing.alpha,
            "watermark": self._wm,
            "late_total": dict(self.late_total),
            "emitted": emitted,
            "windows": windows,
        }

    @classmethod
    def restore(cls, settings: WindowSettings, state: dict[str, Any]) -> WindowProcessor:
        """A processor continuing from :meth:`snapshot` (same sizes and accuracy required)."""
        if state.get("format") != 1:
            msg = f"unknown window snapshot format {state.get('format')!r}"
            raise ValueError(msg)
        sizes, alpha = state["sizes_us"], state["relative_accuracy"]
        if sizes != list(settings.sizes_us) or alpha != settings.relative_accuracy:
            msg = (
                f"the snapshot has window sizes {sizes} and accuracy {alpha}, "
                f"the settings {list(settings.sizes_us)} and {settings.relative_accuracy}"
            )
            raise ValueError(msg)
        p = cls(settings)
        p._wm = state["watermark"]
        p.late_total = dict(state["late_total"])
        for size, start in state["emitted"]:
            j = sizes.index(size)
            p._groups[(j, start // size)] = _Group(j, start + size, emitted=True)
        if state["windows"]["start"]:
            p._load(state["windows"])
        return p

    # ----------------------------------------------------------------- internals

    def _load(self, w: dict[str, list[Any]]) -> None:
        S, packing = self._slots, self._packing
        sizes = list(self._sizes)
        js = np.array([sizes.index(size) for size in w["size_us"]], np.int64)
        series = [self._number_of(d, s) for d, s in zip(w["device_id"], w["sensor"], strict=True)]
        line = np.array(series, np.int64) * len(sizes) + js
        size = np.array(w["size_us"], np.int64)
        u = np.array(w["start"], np.int64) // size
        slot = np.array(S.take(len(js)), np.int64)
        for name in (*_STATE_FIELDS, "version", "changed"):
            getattr(S, name)[slot] = w[name]
        S.end[slot] = S.start[slot] + size
        S.line[slot] = line
        keys = self._window_keys(u, line)
        self._slot_of.update(zip(keys, slot.tolist(), strict=True))
        counted: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
        for s, k, j, x, sketch_state in zip(
            slot.tolist(), keys, js.tolist(), u.tolist(), w["sketch"], strict=True
        ):
            S.key[s] = k
            if (j, x) not in self._groups:
                self._groups[(j, x)] = _Group(j, (x + 1) * sizes[j])
            bucket, count = QuantileSketch.from_state(sketch_state).bucket_arrays()
            counted.setdefault((j, x), []).append((bucket + (s * packing.span + packing.max_key), count))
        for gkey, parts in counted.items():
            self._groups[gkey].add_counted(
                np.concatenate([packed for packed, _ in parts]), np.concatenate([n for _, n in parts])
            )
        self._remember_newest(line, u, slot)

    def _number_of(self, device_id: str, sensor: str) -> int:
        if device_id != ALL_DEVICES:
            return int(self._series_numbers([device_id], [sensor])[0])
        number = self._fleet.get(sensor)
        if number is None:
            number = self._fleet[sensor] = self._new_series((sensor, ALL_DEVICES))
        return number

    @staticmethod
    def _numbers(index: dict[str, int], names: list[str]) -> np.ndarray:
        found = list(map(index.get, names, repeat(-1)))
        if -1 in found:
            for i, number in enumerate(found):
                if number == -1:
                    found[i] = index.setdefault(names[i], len(index))
        return np.array(found, np.int64)

    def _series_numbers(self, device_id: list[str], sensor: list[str]) -> np.ndarray:
        pair = self._numbers(self._device_no, device_id) << 20 | self._numbers(self._sensor_no, sensor)
        if len(self._sensor_no) > 1 << 20:
            msg = "more than 2**20 sensor names in one partition"
            raise ValueError(msg)
        series = self._pairs.get(pair)
        miss = np.flatnonzero(series < 0)
        if len(miss):
            made: dict[int, int] = {}  # new this batch
            for i, p in zip(miss.tolist(), pair[miss].tolist(), strict=True):
                number = made.get(p)
                if number is None:
                    number = made[p] = self._new_series((sensor[i], device_id[i]))
                    self._fleet_of[number] = self._number_of(ALL_DEVICES, sensor[i])
                    self._pairs.put(p, number)
                series[i] = number
        return series

    def _new_series(self, name: tuple[str, str]) -> int:
        number = len(self._names)
        lines = (number + 1) * len(self._sizes)
        if lines > _LINE_SPAN:
            msg = f"more than {_LINE_SPAN // len(self._sizes)} series in one partition: use more partitions"
            raise ValueError(msg)
        self._names.append(name)
        if lines > len(self._line_u):
            grow = max(lines, 2 * len(self._line_u)) - len(self._line_u)
            self._line_u = np.concatenate((self._line_u, np.full(grow, _I64_MIN, np.int64)))
            self._line_slot = np.concatenate((self._line_slot, np.zeros(grow, np.int64)))
        if number >= len(self._fleet_of):
            self._fleet_of = np.concatenate((self._fleet_of, np.zeros(len(self._fleet_of), np.int64)))
        return number

    def _window_keys(self, u: np.ndarray, line: np.ndarray) -> list[int]:
        if len(u) and int(u.min()) > -_U_FAST and int(u.max()) < _U_FAST:
            keys: list[int] = (u * _LINE_SPAN + line).tolist()
            return keys
        return [a * _LINE_SPAN + b for a, b in zip(u.tolist(), line.tolist(), strict=True)]

    def _slots_for(self, line: np.ndarray, u: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The slot of each (line, window number), opening windows first seen."""
        slot: np.ndarray = self._line_slot[line]
        miss = np.flatnonzero(self._line_u[line] != u)
        if len(miss) == 0:
            return slot
        ml, mu = line[miss], u[miss]
        keys = self._window_keys(mu, ml)
        slot_of = self._slot_of
        found = list(map(slot_of.get, keys, repeat(-1)))
        if -1 in found:
            misses = [i for i, s in enumerate(found) if s == -1]
            # key -> its first position (walked backwards so that the first occurrence stays)
            first = dict(zip(map(keys.__getitem__, reversed(misses)), reversed(misses), strict=True))
            taken = self._slots.take(len(first))
            slot_of.update(zip(first, taken, strict=True))
            self._open(np.array(taken, np.int64), list(first), ml, mu, values[miss], list(first.values()))
            for i in misses:
                found[i] = slot_of[keys[i]]
        ms = np.array(found, np.int64)
        slot[miss] = ms
        self._remember_newest(ml, mu, ms)
        return slot

    def _open(
        self,
        slots: np.ndarray,
        keys: list[int],
        line: np.ndarray,
        u: np.ndarray,
        values: np.ndarray,
        where: list[int],
    ) -> None:
        S = self._slots
        pos = np.array(where, np.int64)
        size = np.array(self._sizes, np.int64)[line[pos] % len(self._sizes)]
        S.line[slots] = line[pos]
        S.start[slots] = u[pos] * size
        S.end[slots] = S.start[slots] + size
        S.shift[slots] = values[pos]  # the first value to arrive: the same however the log is cut
        for s, k in zip(slots.tolist(), keys, strict=True):
            S.key[s] = k

    def _remember_newest(self, line: np.ndarray, u: np.ndarray, slot: np.ndarray) -> None:
        order = np.lexsort((u, line))
        line, u, slot = line[order], u[order], slot[order]
        last = np.flatnonzero(np.concatenate((line[1:] != line[:-1], [True])))
        line, u, slot = line[last], u[last], slot[last]
        newer = u > self._line_u[line]
        self._line_u[line[newer]] = u[newer]
        self._line_slot[line[newer]] = slot[newer]

    def _fold(self, slot: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        # ufunc.at applies rows in order, so sums come out bit for bit the same however the log is cut.
        S = self._slots
        S.changed[slot] = True
        np.add.at(S.count, slot, 1)
        shifted = values - S.shift[slot]
        np.add.at(S.s1, slot, shifted)
        np.add.at(S.s2, slot, shifted * shifted)
        np.minimum.at(S.min, slot, values)
        np.maximum.at(S.max, slot, values)
        # Positions follow arrival order within a window: on equal event times the later arrival is last.
        np.maximum.at(S.last_ts, slot, ts)
        hit = np.flatnonzero(ts == S.last_ts[slot])
        owner = slot[hit]
        S.pick[owner] = -1
        np.maximum.at(S.pick, owner, hit)
        S.last[owner] = values[S.pick[owner]]
        earlier = np.flatnonzero(ts < S.first_ts[slot])  # a tie keeps the earlier arrival
        if len(earlier):
            slot, ts, values = slot[earlier], ts[earlier], values[earlier]
            np.minimum.at(S.first_ts, slot, ts)
            hit = np.flatnonzero(ts == S.first_ts[slot])
            owner = slot[hit]
            S.pick[owner] = _I64_MAX
            np.minimum.at(S.pick, owner, hit)
            S.first[owner] = values[S.pick[owner]]

    def _feed_sketches(self, blocks: list[tuple[int, int, np.ndarray]], packed: np.ndarray) -> None:
        for j, offset, u in blocks:
            both = packed[
                offset : offset + 2 * len(u)
            ]  # the device rows, then the fleet rows of the same readings
            lo, hi = int(u.min()), int(u.max())
            if lo == hi:
                parts = [(lo, both)]
            else:
                uu = np.concatenate((u, u))
                parts = [(x, both[uu == x]) for x in np.unique(u).tolist()]
            for x, part in parts:
                group = self._groups.get((j, x))
                if group is None:
                    group = self._groups[(j, x)] = _Group(j, (x + 1) * self._sizes[j])
                group.add(part)
                group.dirty = group.emitted

    def _sketches(self, slots: np.ndarray, groups: list[_Group]) -> list[QuantileSketch]:
        """The sketch of each slot (all in the given groups)."""
        S = self._slots
        out: list[QuantileSketch] = [QuantileSketch()] * len(slots)
        end, j = S.end[slots], S.line[slots] % len(self._sizes)
        found = 0
        for group in groups:
            where = np.flatnonzero((end == group.end) & (j == group.j))
            if len(where):
                chosen = slots[where]
                made = group.sketches(chosen, S.count[chosen], self._packing)
                for i, sketch in zip(where.tolist(), made, strict=True):
                    out[i] = sketch
                found += len(where)
        assert found == len(slots), "every window in memory belongs to a group"
        return out

    def _in_order(self, slots: np.ndarray) -> np.ndarray:
        """The slots in emission order: by end, size, sensor, device."""
        names = self._names
        if len(self._rank) != len(names):  # new series since the last ranking
            self._rank = np.empty(len(names), np.int64)
            self._rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
        S = self._slots
        line = S.line[slots]
        ns = len(self._sizes)
        ordered: np.ndarray = slots[np.lexsort((self._rank[line // ns], line % ns, S.end[slots]))]
        return ordered

    def _emit(self) -> list[WindowAggregate]:
        wm = self._wm
        if wm is None:
            return []
        out: list[WindowAggregate] = []
        due = [g for g in self._groups.values() if g.end <= wm and (g.dirty or not g.emitted)]
        if due:
            S = self._slots
            used = S.used
            ready = self._in_order(np.flatnonzero(S.changed[:used] & (S.end[:used] <= wm)))
            S.version[ready] += 1
            S.changed[ready] = False
            out = self._aggregates(ready, self._sketches(ready, due))
            for group in due:
                group.emitted, group.dirty = True, False
        horizon = wm - self.settings.allowed_lateness_us
        done = [k for k, g in self._groups.items() if g.end <= horizon]
        if done:
            self._finalise(horizon)
            for k in done:
                del self._groups[k]
        return out

    def _finalise(self, horizon: int) -> None:
        S = self._slots
        final = np.flatnonzero(S.end[: S.used] <= horizon)
        line = S.line[final]
        stale = self._line_slot[line] == final
        self._line_u[line[stale]] = _I64_MIN
        deque(map(self._slot_of.pop, map(S.key.__getitem__, final.tolist())), maxlen=0)
        S.release(final)

    def _aggregates(self, slots: np.ndarray, sketches: list[QuantileSketch]) -> list[WindowAggregate]:
        S = self._slots
        count = S.count[slots]
        s1 = S.s1[slots]
        total = S.shift[slots] * count + s1
        m2 = np.maximum(S.s2[slots] - s1 * s1 / count, 0.0)
        ns = len(self._sizes)
        line = S.line[slots]
        names = [self._names[x] for x in (line // ns).tolist()]
        sizes = [self._sizes[j] for j in (line % ns).tolist()]
        columns = zip(
            names, sizes, S.start[slots].tolist(), count.tolist(), total.tolist(), m2.tolist(),
            S.min[slots].tolist(), S.max[slots].tolist(), S.first[slots].tolist(), S.first_ts[slots].tolist(),
            S.last[slots].tolist(), S.last_ts[slots].tolist(), sketches, S.version[slots].tolist(),
            strict=True,
        )  # fmt: skip
        return [WindowAggregate(sensor, device, *rest) for (sensor, device), *rest in columns]

    def _late(
        self,
        parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
        device_id: list[str],
        sensor: list[str],
        ts: np.ndarray,
        value: np.ndarray,
        seq: list[int],
        received_at: list[int],
    ) -> LateReadings:
        out = LateReadings()
        if not parts:
            return out
        if parts[0][0] == 0:  # late for the smallest size: counted once per reading
            for name, n in Counter(map(sensor.__getitem__, parts[0][1].tolist())).items():
                self.late_total[name] = self.late_total.get(name, 0) + n
        js = np.concatenate([np.full(len(p[1]), p[0], np.int64) for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        end = np.concatenate([p[2] for p in parts])
        wm = np.concatenate([p[3] for p in parts])
        order = np.lexsort((js, rows))  # by arrival, then size
        rows, js, end, wm = rows[order], js[order], end[order], wm[order]
        size = np.array(self._sizes, np.int64)[js]
        r = rows.tolist()
        out.device_id = [device_id[i] for i in r]
        out.sensor = [sensor[i] for i in r]
        out.ts = ts[rows].tolist()
        out.value = value[rows].tolist()
        out.seq = [seq[i] for i in r]
        out.received_at = [received_at[i] for i in r]
        out.size_us = size.tolist()
        out.window_start = (end - size).tolist()
        out.late_by_us = (wm - end).tolist()
        return out
