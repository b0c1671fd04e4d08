"""Numbers for the series a window processor keeps windows of.

Internal to :class:`~fleetstream.domain.windows.WindowProcessor`: a series is
a (device, sensor) pair, or a sensor over the whole fleet (device id
:data:`~fleetstream.domain.window_records.ALL_DEVICES`), numbered 0, 1, 2...
in order of first sight, so the windows of a batch are found with integer
arithmetic on whole columns.
"""

from __future__ import annotations

from itertools import repeat

import numpy as np

from fleetstream.domain.window_records import ALL_DEVICES

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing


class PairIndex:
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

    def put_many(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add distinct keys that are not there yet, a whole column at once.

        Example:
            >>> index = PairIndex(bits=2)
            >>> index.put_many(np.array([5, 9, 700]), np.array([0, 1, 2]))
            >>> index.get(np.array([700, 5, 6])).tolist()
            [2, 0, -1]
        """
        bits = self._bits
        while 2 * (self._size + len(keys)) > 1 << bits:
            bits += 1
        if bits != self._bits:  # grow, and place the keys held so far again with the new ones
            held = np.flatnonzero(self._keys != -1)
            keys = np.concatenate((self._keys[held], keys))
            values = np.concatenate((self._values[held], values))
            self._bits, self._size = bits, 0
            self._keys = np.full(1 << bits, -1, np.int64)
            self._values = np.zeros(1 << bits, np.int64)
        todo = np.arange(len(keys))
        at = self._home(keys)
        wrap = len(self._keys) - 1
        while len(todo):  # linear probing, one step for every key still unplaced
            empty = self._keys[at] == -1
            candidates = np.flatnonzero(empty)
            placed = candidates[np.unique(at[candidates], return_index=True)[1]]  # one key per empty slot
            self._keys[at[placed]] = keys[todo[placed]]
            self._values[at[placed]] = values[todo[placed]]
            rest = np.ones(len(todo), np.bool_)
            rest[placed] = False
            # a key that found its slot empty but lost it to another tries the same slot, now taken
            todo, at = todo[rest], np.where(empty[rest], at[rest], (at[rest] + 1) & wrap)
        self._size += len(keys)

    def _place(self, key: int, value: int) -> None:
        wrap = len(self._keys) - 1
        at = int(self._home(np.array([key], np.int64))[0])
        while self._keys[at] != -1:
            at = (at + 1) & wrap
        self._keys[at] = key
        self._values[at] = value


class SeriesIndex:
    """The number of each series, and of the fleet series of its sensor.

    Devices and sensors get numbers of their own first (dict look-ups of
    strings, whose hashes Python caches), and the pairs of a whole batch are
    then looked up at once, without a tuple per reading.

    Example:
        >>> series = SeriesIndex(max_series=100)
        >>> series.numbers(["d1", "d2", "d1"], ["t", "t", "h"]).tolist()
        [0, 2, 3]
        >>> [series.names[n] for n in series.fleet_of[[0, 2, 3]].tolist()]
        [('t', '*'), ('t', '*'), ('h', '*')]
    """

    def __init__(self, max_series: int) -> None:
        self._max_series = max_series
        self._device_no: dict[str, int] = {}
        self._sensor_no: dict[str, int] = {}
        self._pairs = PairIndex()  # device_no << 20 | sensor_no -> series
        self._fleet: dict[str, int] = {}  # sensor -> its fleet series
        self.names: list[tuple[str, str]] = []  # series -> (sensor, device_id)
        self.fleet_of = np.zeros(64, np.int64)  # series -> its sensor's fleet series
        self._rank = np.zeros(0, np.int64)  # series -> place in (sensor, device_id) order

    def __len__(self) -> int:
        return len(self.names)

    def number_of(self, device_id: str, sensor: str) -> int:
        """The number of one series, new if it was not seen yet."""
        if device_id != ALL_DEVICES:
            return int(self.numbers([device_id], [sensor])[0])
        number = self._fleet.get(sensor)
        if number is None:
            number = self._fleet[sensor] = self._new((sensor, ALL_DEVICES))
        return number

    @staticmethod
    def _numbers_in(index: dict[str, int], names: list[str]) -> np.ndarray:
        found = list(map(index.get, names, repeat(-1)))
        if -1 in found:
            for i, number in enumerate(found):
                if number == -1:
                    found[i] = index.setdefault(names[i], len(index))
        return np.array(found, np.int64)

    def numbers(self, device_id: list[str], sensor: list[str]) -> np.ndarray:
        """The number of the series of each reading, numbering those not seen yet."""
        pair = self._numbers_in(self._device_no, device_id) << 20 | self._numbers_in(self._sensor_no, sensor)
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
                    number = made[p] = self._new((sensor[i], device_id[i]))
                    self.fleet_of[number] = self.number_of(ALL_DEVICES, sensor[i])
                    self._pairs.put(p, number)
                series[i] = number
        return series

    def load(self, sensor: list[str], device_id: list[str]) -> None:
        """Number the given series 0, 1, 2... (the ``names`` of another index), into an empty index."""
        if self.names:
            msg = "series can only be loaded into an empty index"
            raise ValueError(msg)
        if len(sensor) > self._max_series:
            msg = f"more than {self._max_series} series in one partition: use more partitions"
            raise ValueError(msg)
        self.names = list(zip(sensor, device_id, strict=True))
        self._fleet = {s: i for i, (s, d) in enumerate(self.names) if d == ALL_DEVICES}
        own = [i for i, d in enumerate(device_id) if d != ALL_DEVICES]
        own_sensor = [sensor[i] for i in own]
        device_no = self._numbers_in(self._device_no, [device_id[i] for i in own])
        pair = device_no << 20 | self._numbers_in(self._sensor_no, own_sensor)
        self._pairs.put_many(pair, np.array(own, np.int64))
        self.fleet_of = np.zeros(max(64, len(sensor)), np.int64)
        self.fleet_of[own] = [self._fleet[s] for s in own_sensor]

    def rank(self) -> np.ndarray:
        """The place of each series in (sensor, device_id) order."""
        names = self.names
        if len(self._rank) != len(names):  # new series since the last ranking
            self._rank = np.empty(len(names), np.int64)
            self._rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
        return self._rank

    def _new(self, name: tuple[str, str]) -> int:
        number = len(self.names)
        if number >= self._max_series:
            msg = f"more than {self._max_series} series in one partition: use more partitions"
            raise ValueError(msg)
        self.names.append(name)
        if number >= len(self.fleet_of):
            self.fleet_of = np.concatenate((self.fleet_of, np.zeros(len(self.fleet_of), np.int64)))
        return number
