"""Running metrics per sensor and per device+sensor."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np


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


class SeriesStats:
    """:class:`RunningStats` of many series at once, kept in numpy arrays and updated a batch at a time.

    Variance uses shifted sums (each series' first value is its shift), which
    stays exact to a few ulps for readings far from zero with a small spread.
    Merging several batches gives the same figures as folding the values one
    by one (to rounding).

    Example:
        >>> s = SeriesStats()
        >>> s.add(np.array([0, 0, 1]), np.array([2.0, 4.0, 7.0]), np.array([1, 3, 2]))
        >>> s.get(0).mean, s.get(0).last, s.get(1).count
        (3.0, 4.0, 1)
    """

    def __init__(self, capacity: int = 64) -> None:
        self.size = 0
        self._count = np.zeros(capacity, np.int64)
        self._shift = np.zeros(capacity)
        self._s1 = np.zeros(capacity)
        self._s2 = np.zeros(capacity)
        self._min = np.full(capacity, np.inf)
        self._max = np.full(capacity, -np.inf)
        self._last = np.full(capacity, np.nan)
        self._last_ts = np.full(capacity, np.iinfo(np.int64).min, np.int64)

    def grow(self, size: int) -> None:
        """Make room for series ``0 .. size-1``."""
        if size <= len(self._count):
            self.size = max(self.size, size)
            return
        capacity = max(size, 2 * len(self._count))
        for name, fill in (
            ("_count", 0),
            ("_shift", 0.0),
            ("_s1", 0.0),
            ("_s2", 0.0),
            ("_min", np.inf),
            ("_max", -np.inf),
            ("_last", np.nan),
            ("_last_ts", np.iinfo(np.int64).min),
        ):
            old = getattr(self, name)
            new = np.full(capacity, fill, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        self.size = size

    def add(self, index: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        """Fold in ``values[i]`` (event time ``ts[i]``) into series ``index[i]``."""
        if len(index) == 0:
            return
        self.grow(int(index.max()) + 1)
        new = self._count[index] == 0
        if new.any():
            self._shift[index[new]] = values[new]
        shifted = values - self._shift[index]
        np.add.at(self._count, index, 1)
        np.add.at(self._s1, index, shifted)
        np.add.at(self._s2, index, shifted * shifted)
        np.minimum.at(self._min, index, values)
        np.maximum.at(self._max, index, values)
        np.maximum.at(self._last_ts, index, ts)
        newest = ts == self._last_ts[index]  # the newest by event time wins (a late reading does not)
        self._last[index[newest]] = values[newest]

    _FIELDS = ("_count", "_shift", "_s1", "_s2", "_min", "_max", "_last", "_last_ts")

    def to_state(self) -> dict[str, Any]:
        """Builtins only (for a checkpoint)."""
        return {name: getattr(self, name)[: self.size].tolist() for name in self._FIELDS}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SeriesStats:
        """The series stats a :meth:`to_state` saved."""
        size = len(state["_count"])
        out = cls(max(64, size))
        out.grow(size)
        for name in cls._FIELDS:
            getattr(out, name)[:size] = state[name]
        return out

    def get(self, i: int) -> RunningStats:
        """Series ``i`` as a :class:`RunningStats`."""
        count = int(self._count[i])
        if count == 0:
            return RunningStats()
        s1, s2 = float(self._s1[i]), float(self._s2[i])
        return RunningStats(
            count=count,
            mean=float(self._shift[i]) + s1 / count,
            m2=max(0.0, s2 - s1 * s1 / count),
            min=float(self._min[i]),
            max=float(self._max[i]),
            last=float(self._last[i]),
            last_ts=int(self._last_ts[i]),
        )


class _Index:
    """Dense numbers for keys (sensor names, device ids), in order of first sight."""

    def __init__(self) -> None:
        self.numbers: dict[Any, int] = {}
        self.keys: list[Any] = []

    def of(self, keys: list[Any]) -> np.ndarray:
        numbers = self.numbers
        found = np.fromiter(map(numbers.get, keys, repeat(-1)), np.int64, len(keys))
        if len(found) and found.min() < 0:
            for i in np.flatnonzero(found < 0).tolist():
                key = keys[i]
                n = numbers.get(key, -1)
                if n == -1:
                    n = numbers[key] = len(self.keys)
                    self.keys.append(key)
                found[i] = n
        return found


_LOW = 32  # a pair key is (first << _LOW) | second
_NONE = np.iinfo(np.int64).max  # sorts after every key: a search never runs off the end


class _PairIndex:
    """Dense numbers for pairs of small numbers, in order of first sight, found a batch at a time in numpy.

    A pair is one int64 key (both numbers below 2**31); the known keys are kept
    sorted beside their numbers. Building and hashing a (device, sensor) tuple
    per row cost more than the statistics themselves; sorting the batch's keys
    and searching them costs about a fifth of that.
    """

    def __init__(self) -> None:
        self._keys = np.array([_NONE], np.int64)  # sorted, ending in the sentinel
        self._numbers = np.array([-1], np.int64)

    def __len__(self) -> int:
        return len(self._keys) - 1

    def of(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """The number of each pair ``(first[i], second[i])``; pairs not seen before get the next ones."""
        key = (first << _LOW) | second
        order = np.argsort(key)
        ordered = key[order]
        where = np.searchsorted(self._keys, ordered)
        miss = self._keys[where] != ordered
        if miss.any():
            rows = np.sort(order[miss])  # in arrival order, so new pairs are numbered as first seen
            fresh, first_row = np.unique(key[rows], return_index=True)
            numbers = np.empty(len(fresh), np.int64)
            numbers[np.argsort(first_row)] = np.arange(len(self), len(self) + len(fresh))
            at = np.searchsorted(self._keys, fresh)
            self._keys = np.insert(self._keys, at, fresh)
            self._numbers = np.insert(self._numbers, at, numbers)
            where = np.searchsorted(self._keys, ordered)
        out = np.empty(len(key), np.int64)
        out[order] = self._numbers[where]
        return out

    def pairs(self) -> tuple[list[int], list[int]]:
        """The pairs in the order of their numbers, as two columns."""
        keys = np.empty(len(self), np.int64)
        keys[self._numbers[:-1]] = self._keys[:-1]
        first: list[int] = (keys >> _LOW).tolist()
        second: list[int] = (keys & ((1 << _LOW) - 1)).tolist()
        return first, second


class LiveStats:
    """Running metrics of everything acknowledged: per sensor and per device+sensor.

    Example:
        >>> live = LiveStats()
        >>> live.add(["a", "b"], ["temperature", "temperature"], [20.0, 22.0], [1, 1])
        >>> live.sensors["temperature"].mean, live.devices[("b", "temperature")].count
        (21.0, 1)
    """

    def __init__(self) -> None:
        self._sensor_index = _Index()
        self._device_index = _Index()
        self._series_index = _PairIndex()  # (device number, sensor number) -> series number
        self._by_sensor = SeriesStats()
        self._by_series = SeriesStats()
        self.device_ids: set[str] = set()
        self.readings_total = 0

    def add(self, device_ids: list[str], sensors: list[str], values: list[float], ts: list[int]) -> None:
        """Fold in acknowledged readings, given as columns."""
        if not values:
            return
        n = len(values)
        if not len(device_ids) == len(sensors) == len(ts) == n:
            msg = "live stats: the columns differ in length"
            raise ValueError(msg)
        v = np.fromiter(values, np.float64, n)
        t = np.fromiter(ts, np.int64, n)
        sensor = self._sensor_index.of(sensors)
        known = len(self._device_index.keys)
        device = self._device_index.of(device_ids)
        if len(self._device_index.keys) != known:
            self.device_ids.update(self._device_index.keys[known:])
        self._by_sensor.add(sensor, v, t)
        self._by_series.add(self._series_index.of(device, sensor), v, t)
        self.readings_total += n

    @property
    def sensors(self) -> dict[str, RunningStats]:
        """sensor → its running stats (a snapshot)."""
        return {key: self._by_sensor.get(i) for i, key in enumerate(self._sensor_index.keys)}

    @property
    def devices(self) -> dict[tuple[str, str], RunningStats]:
        """(device, sensor) → its running stats (a snapshot)."""
        return self.series()

    def series(
        self, device_ids: Iterable[str] | None = None, sensors: Iterable[str] | None = None
    ) -> dict[tuple[str, str], RunningStats]:
        """Like :attr:`devices`, only for the given devices and sensors (``None``: all)."""
        want_devices = set(device_ids) if device_ids is not None else None
        want_sensors = set(sensors) if sensors is not None else None
        return {
            key: self._by_series.get(i)
            for i, key in enumerate(self._series_keys())
            if (want_devices is None or key[0] in want_devices)
            and (want_sensors is None or key[1] in want_sensors)
        }

    def _series_keys(self) -> list[tuple[str, str]]:
        """(device, sensor) of each series, in the order of their numbers."""
        devices, sensors = self._device_index.keys, self._sensor_index.keys
        first, second = self._series_index.pairs()
        return [(devices[d], sensors[s]) for d, s in zip(first, second, strict=True)]

    def to_state(self) -> dict[str, Any]:
        """Builtins only (for a checkpoint).

        >>> live = LiveStats()
        >>> live.add(["a"], ["t"], [2.5], [7])
        >>> LiveStats.from_state(live.to_state()).devices == live.devices
        True
        """
        return {
            "sensors": list(self._sensor_index.keys),
            "series": [list(key) for key in self._series_keys()],
            "by_sensor": self._by_sensor.to_state(),
            "by_series": self._by_series.to_state(),
            "readings_total": self.readings_total,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LiveStats:
        """The live stats a :meth:`to_state` saved."""
        out = cls()
        out._sensor_index.of(list(state["sensors"]))
        series = state["series"]
        if series:
            device = out._device_index.of([d for d, _ in series])
            sensor = out._sensor_index.of([s for _, s in series])
            out._series_index.of(device, sensor)  # numbered 0, 1, 2 ... in the saved order
        out._by_sensor = SeriesStats.from_state(state["by_sensor"])
        out._by_series = SeriesStats.from_state(state["by_series"])
        out.device_ids = set(out._device_index.keys)
        out.readings_total = int(state["readings_total"])
        return out

    def sensor_names(self) -> list[str]:
        """Every sensor seen."""
        return list(self._sensor_index.keys)

    @property
    def sensor_count(self) -> int:
        """How many sensors were seen."""
        return len(self._sensor_index.keys)
