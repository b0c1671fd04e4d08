"""Running metrics of many series at once, in numpy arrays, and the indexes that number the series.

:class:`SeriesStats` keeps a :class:`~fleetstream.domain.stats_running.RunningStats` per row
and folds a batch of readings into its rows at a time; ``_Index`` numbers keys (sensor names,
device ids) and ``_PairIndex`` pairs of those numbers (a device's sensor), so a batch's rows
are found with a few array operations. :class:`~fleetstream.domain.stats.LiveStats` builds on them.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import numpy as np

from fleetstream.domain.stats_running import RunningStats


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
