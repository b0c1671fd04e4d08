"""Running metrics per sensor and per device+sensor.

:class:`LiveStats` is the face: it numbers sensors, devices and their series and keeps their
metrics in a :class:`~fleetstream.domain.stats_series.SeriesStats`. The one-series metrics
(:class:`RunningStats`, :class:`RateMeter`) are in :mod:`~fleetstream.domain.stats_running`,
the array-backed ones and the indexes in :mod:`~fleetstream.domain.stats_series`; all are
importable from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from fleetstream.domain.stats_running import RateMeter, RunningStats
from fleetstream.domain.stats_series import SeriesStats, _Index, _PairIndex

__all__ = ["LiveStats", "RateMeter", "RunningStats", "SeriesStats"]


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
