"""Failure-prediction features of a device, kept up to date from its closed windows.

A device's recent windows (the last ``horizon`` closed windows of each
sensor, e.g. five one-minute windows) say how it behaves now; a slow moving
average of the windows *older* than that says how it usually behaves. A
degrading host shows itself as a change against its own usual (a fan a
third slower than it used to be) more than as an absolute level, since
every device has a level of its own. So, per sensor:

====== ===================================================================
level  the newest window's mean
delta  level minus the device's baseline (the moving average of older windows)
rel    delta relative to the baseline (a fan at 70 % of its usual speed: -0.3)
slope  least-squares slope of the recent means, per window
spread the mean standard deviation within the recent windows
====== ===================================================================

A device silent for longer than ``gap_windows`` (failed, then repaired)
starts its recent history afresh and keeps its baseline.

Example:
    >>> fx = FeatureExtractor(("t",), horizon=3)
    >>> for minute, mean in enumerate([50.0, 50.0, 50.0, 53.0, 56.0]):
    ...     _ = fx.on_window("d1", "t", (minute + 1) * 60_000_000, mean, 0.5)
    >>> dict(zip(fx.names, fx.features("d1")))
    {'t_level': 56.0, 't_delta': 6.0, 't_rel': 0.12, 't_slope': 3.0, 't_spread': 0.5}
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HOST_SENSORS = ("temperature", "cpu_usage", "fan_rpm", "voltage")
"""The host monitor's sensors that carry precursors of a failure."""
PER_SENSOR = ("level", "delta", "rel", "slope", "spread")


@dataclass(slots=True)
class _Series:
    """One sensor of one device: recent (end, mean, stddev) and the baseline of older windows."""

    recent: deque[tuple[int, float, float]] = field(default_factory=deque)
    baseline: float | None = None
    older: int = 0  # windows folded into the baseline so far


class FeatureExtractor:
    """Per-device features from closed windows of ``sensors``.

    Args:
        sensors: the sensors to use, in feature order.
        horizon: how many recent windows make the "now" of a sensor.
        size_us: the window size (the slope is per window; gaps are counted in windows).
        baseline_alpha: weight of each older window in the baseline's moving average.
        gap_windows: a silence longer than this many windows restarts the recent history.
    """

    def __init__(
        self,
        sensors: Sequence[str] = HOST_SENSORS,
        *,
        horizon: int = 5,
        size_us: int = 60_000_000,
        baseline_alpha: float = 0.05,
        gap_windows: int = 5,
    ) -> None:
        if not sensors:
            msg = "features need at least one sensor"
            raise ValueError(msg)
        if horizon < 1 or size_us <= 0 or not 0 < baseline_alpha <= 1 or gap_windows < 1:
            msg = "horizon and gap_windows must be >= 1, size_us > 0 and baseline_alpha in (0, 1]"
            raise ValueError(msg)
        self.sensors = tuple(sensors)
        self.horizon = horizon
        self.size_us = size_us
        self.alpha = baseline_alpha
        self.gap_us = gap_windows * size_us
        self.names = tuple(f"{s}_{p}" for s in self.sensors for p in PER_SENSOR)
        self._index = {s: i for i, s in enumerate(self.sensors)}
        self._devices: dict[str, list[_Series]] = {}

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._devices

    def on_window(self, device_id: str, sensor: str, end_us: int, mean: float, stddev: float | None) -> bool:
        """Fold in one closed window; False (and nothing changes) for a sensor not used."""
        i = self._index.get(sensor)
        if i is None:
            return False
        series = self._devices.get(device_id)
        if series is None:
            series = self._devices[device_id] = [_Series() for _ in self.sensors]
        s = series[i]
        if s.recent and end_us <= s.recent[-1][0]:
            return False  # a window seen already (a late update) or out of order: keep the order
        if s.recent and end_us - s.recent[-1][0] > self.gap_us:
            s.recent.clear()  # back after a silence: what came before is not "recent"
        if s.baseline is None:
            s.baseline = mean
        s.recent.append((end_us, mean, 0.0 if stddev is None else stddev))
        while len(s.recent) > self.horizon:
            _, old, _ = s.recent.popleft()
            s.older += 1
            # The first older windows set the baseline faster (a plain mean), then it moves slowly.
            weight = max(self.alpha, 1.0 / s.older)
            s.baseline += weight * (old - s.baseline)
        return True

    def ready(self, device_id: str) -> bool:
        """Whether every sensor of the device has a recent window."""
        series = self._devices.get(device_id)
        return series is not None and all(s.recent for s in series)

    def features(self, device_id: str) -> list[float]:
        """The device's features in :attr:`names` order (zeros for a sensor with no recent window)."""
        out: list[float] = []
        for s in self._devices.get(device_id) or [_Series() for _ in self.sensors]:
            if not s.recent or s.baseline is None:
                out.extend([0.0] * len(PER_SENSOR))
                continue
            ends = [e for e, _, _ in s.recent]
            means = [m for _, m, _ in s.recent]
            level = means[-1]
            delta = level - s.baseline
            rel = delta / abs(s.baseline) if s.baseline else 0.0
            spread = sum(sd for _, _, sd in s.recent) / len(s.recent)
            out.extend([level, delta, rel, _slope(ends, means, self.size_us), spread])
        return out

    def forget(self, device_id: str) -> None:
        """Drop a device's state (removed from the fleet)."""
        self._devices.pop(device_id, None)

    def snapshot(self) -> dict[str, Any]:
        """Builtins-only state (JSON-ready), for :meth:`restore`."""
        return {
            dev: [
                {"recent": [list(r) for r in s.recent], "baseline": s.baseline, "older": s.older}
                for s in series
            ]
            for dev, series in sorted(self._devices.items())
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace the state with a :meth:`snapshot` of an extractor with the same sensors.

        Raises:
            ValueError: the snapshot has another number of sensors.
        """
        devices: dict[str, list[_Series]] = {}
        for dev, series in state.items():
            if len(series) != len(self.sensors):
                msg = f"feature snapshot: {len(series)} sensors for {dev!r}, expected {len(self.sensors)}"
                raise ValueError(msg)
            devices[dev] = [
                _Series(
                    deque((int(e), float(m), float(sd)) for e, m, sd in s["recent"]),
                    None if s["baseline"] is None else float(s["baseline"]),
                    int(s["older"]),
                )
                for s in series
            ]
        self._devices = devices


DeviceWindows = Iterable[tuple[int, Mapping[str, tuple[float, float | None]]]]
"""One device's closed windows in time order: (window end µs, sensor → (mean, stddev))."""


def feature_rows(
    extractor: FeatureExtractor, device_id: str, windows: DeviceWindows
) -> tuple[list[int], list[list[float]]]:
    """Feed a device's windows through ``extractor``: the ends at which it was ready, and its features.

    These are the rows a model is trained on, computed exactly as the streaming predictor computes them.
    """
    times: list[int] = []
    rows: list[list[float]] = []
    for end_us, stats in windows:
        for sensor, (mean, stddev) in stats.items():
            extractor.on_window(device_id, sensor, end_us, mean, stddev)
        if extractor.ready(device_id):
            times.append(end_us)
            rows.append(extractor.features(device_id))
    return times, rows


def _slope(ends: Sequence[int], means: Sequence[float], size_us: int) -> float:
    """Least-squares slope of ``means`` against time, in value per window (0 below two windows)."""
    n = len(means)
    if n < 2:
        return 0.0
    xs = [e / size_us for e in ends]
    mx, my = sum(xs) / n, sum(means) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, means, strict=True)) / sxx
