"""The failure predictor in the stream: closed windows in, a risk per device and alerts out.

:class:`FailurePredictor` keeps each device's features
(:class:`~fleetstream.domain.features.FeatureExtractor`), scores them with a
:class:`~fleetstream.domain.federated.LogisticModel` and opens an alert when
the risk reaches ``open_at``; the alert clears only once the risk falls below
``clear_at`` (hysteresis: a risk hovering at the threshold opens one alert,
not a stream of them). Alerts are :class:`~fleetstream.domain.rules.RuleTransition`
objects of the rule ``failure_predicted``, so whatever consumes range rules
consumes these too. The model, its training and federated averaging live in
:mod:`fleetstream.domain.federated`; their names are exported here too.

Example:
    >>> from fleetstream.domain.features import FeatureExtractor
    >>> fx = FeatureExtractor(("t",), horizon=2)
    >>> model = LogisticModel(fx.names, [0.0] * 5, [1.0] * 5, [0.0, 1.0, 0.0, 0.0, 0.0], -5.0)
    >>> fp = FailurePredictor(model, fx, open_at=0.5, clear_at=0.3)
    >>> out = []
    >>> for minute, mean in enumerate([50.0, 50.0, 50.0, 58.0, 56.0, 50.0]):
    ...     out += fp.on_window("d1", "t", (minute + 1) * 60_000_000, mean, None)
    >>> [(t.kind, t.ts // 60_000_000) for t in out]
    [('open', 4), ('clear', 6)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fleetstream.domain.features import HOST_SENSORS, FeatureExtractor
from fleetstream.domain.federated import (
    LogisticModel,
    ModelRound,
    fedavg,
    fit_local,
    site_of,
    train_federated,
)
from fleetstream.domain.rules import CLEAR, OPEN, RuleTransition
from fleetstream.domain.window_records import ALL_DEVICES, WindowAggregate

__all__ = [
    "RULE_ID",
    "FailurePredictor",
    "LogisticModel",
    "ModelRound",
    "fedavg",
    "fit_local",
    "hysteresis_alerts",
    "site_of",
    "train_federated",
]

RULE_ID = "failure_predicted"
SNAPSHOT_FORMAT = 1


class FailurePredictor:
    """Failure risk per device from its closed windows, with ``failure_predicted`` alerts.

    Args:
        model: the model to score with (None: every risk is 0 until :meth:`set_model`).
        extractor: the features; by default the host sensors over five one-minute windows.
        open_at: the risk at which an alert opens.
        clear_at: the risk below which it clears (below ``open_at``).
        severity: the alerts' severity.
    """

    def __init__(
        self,
        model: LogisticModel | None = None,
        extractor: FeatureExtractor | None = None,
        *,
        open_at: float = 0.5,
        clear_at: float | None = None,
        severity: str = "warning",
    ) -> None:
        clear = open_at * 0.6 if clear_at is None else clear_at
        if not 0.0 <= clear < open_at <= 1.0:
            msg = f"need 0 <= clear_at < open_at <= 1, got clear_at {clear}, open_at {open_at}"
            raise ValueError(msg)
        self.extractor = extractor or FeatureExtractor(HOST_SENSORS)
        self.open_at = open_at
        self.clear_at = clear
        self.severity = severity
        self.model: LogisticModel | None = None
        self.set_model(model)
        self._risk: dict[str, float] = {}
        self._open: dict[str, tuple[int, float]] = {}  # device → (opened at, risk then)

    def set_model(self, model: LogisticModel | None) -> None:
        """Score with another model from now on (a newer round).

        Raises:
            ValueError: the model's features are not the extractor's.
        """
        if model is not None and tuple(model.features) != self.extractor.names:
            names = list(self.extractor.names)
            msg = f"the model's features {list(model.features)} are not the extractor's {names}"
            raise ValueError(msg)
        self.model = model

    def on_window(
        self, device_id: str, sensor: str, end_us: int, mean: float, stddev: float | None
    ) -> list[RuleTransition]:
        """Fold in one closed window (its end, mean, stddev) and re-score the device."""
        if not self.extractor.on_window(device_id, sensor, end_us, mean, stddev):
            return []
        return self._evaluate(device_id, end_us)

    def on_device_windows(
        self, device_id: str, end_us: int, stats: Mapping[str, tuple[float, float | None]]
    ) -> list[RuleTransition]:
        """Fold in one device's windows ending at ``end_us`` (sensor → (mean, stddev)), then score it once."""
        used = [self.extractor.on_window(device_id, s, end_us, m, sd) for s, (m, sd) in stats.items()]
        return self._evaluate(device_id, end_us) if any(used) else []

    def on_windows(self, windows: Iterable[WindowAggregate]) -> list[RuleTransition]:
        """Fold in closed windows (fleet-wide ones are skipped), then score each device once per
        window end, oldest end first.

        Scoring per end rather than once per call keeps the alerts independent of how the stream
        was cut into batches: a batch that closes three minutes of a device scores all three, as
        three batches of one minute each would (the embedded engine and a cluster worker see the
        same windows in different batches, and must open the same alerts).
        """
        by_end: dict[int, list[WindowAggregate]] = {}
        for w in windows:
            if w.device_id != ALL_DEVICES and w.mean is not None:
                by_end.setdefault(w.end, []).append(w)
        out: list[RuleTransition] = []
        for end_us in sorted(by_end):
            touched: dict[str, None] = {}  # in order of arrival
            for w in by_end[end_us]:
                assert w.mean is not None
                if self.extractor.on_window(w.device_id, w.sensor, end_us, w.mean, w.stddev):
                    touched[w.device_id] = None
            for device_id in touched:
                out.extend(self._evaluate(device_id, end_us))
        return out

    def score(self, device_id: str) -> float:
        """The device's failure risk in [0, 1] as of its newest windows (0 before it has them all)."""
        return self._risk.get(device_id, 0.0)

    def active(self) -> dict[str, int]:
        """Devices with an open ``failure_predicted`` alert → when it opened (µs)."""
        return {dev: at for dev, (at, _) in self._open.items()}

    def forget(self, device_id: str) -> None:
        """Drop a device (removed from the fleet); its open alert, if any, is dropped silently."""
        self.extractor.forget(device_id)
        self._risk.pop(device_id, None)
        self._open.pop(device_id, None)

    def _evaluate(self, device_id: str, ts: int) -> list[RuleTransition]:
        if self.model is None or not self.extractor.ready(device_id):
            return []
        risk = self.model.score(self.extractor.features(device_id))
        self._risk[device_id] = risk
        opened = self._open.get(device_id)
        if opened is None and risk >= self.open_at:
            self._open[device_id] = (ts, risk)
            return [RuleTransition(OPEN, RULE_ID, device_id, self.severity, risk, risk, ts)]
        if opened is not None and risk < self.clear_at:
            del self._open[device_id]
            return [RuleTransition(CLEAR, RULE_ID, device_id, self.severity, opened[1], risk, ts)]
        return []

    def snapshot(self) -> dict[str, Any]:
        """Builtins-only state (JSON-ready): features, risks, open alerts and the model."""
        return {
            "format": SNAPSHOT_FORMAT,
            "features": self.extractor.snapshot(),
            "risk": dict(sorted(self._risk.items())),
            "open": {dev: [at, risk] for dev, (at, risk) in sorted(self._open.items())},
            "model": None if self.model is None else self.model.to_dict(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace the state with a :meth:`snapshot`.

        Raises:
            ValueError: an unknown snapshot format, or a model for other features.
        """
        if state.get("format") != SNAPSHOT_FORMAT:
            msg = f"predictor snapshot: unknown format {state.get('format')!r}"
            raise ValueError(msg)
        self.extractor.restore(state["features"])
        self.set_model(None if state["model"] is None else LogisticModel.from_dict(state["model"]))
        self._risk = {str(k): float(v) for k, v in state["risk"].items()}
        self._open = {str(k): (int(v[0]), float(v[1])) for k, v in state["open"].items()}


def hysteresis_alerts(
    times: Sequence[int], risks: Sequence[float], open_at: float, clear_at: float
) -> list[tuple[int, int | None]]:
    """The alerts :class:`FailurePredictor` raises for one device's risk series: (opened, cleared or None).

    Example:
        >>> hysteresis_alerts([1, 2, 3, 4, 5], [0.1, 0.6, 0.45, 0.2, 0.7], 0.5, 0.3)
        [(2, 4), (5, None)]
    """
    out: list[tuple[int, int | None]] = []
    opened: int | None = None
    for t, r in zip(times, risks, strict=True):
        if opened is None and r >= open_at:
            opened = t
        elif opened is not None and r < clear_at:
            out.append((opened, t))
            opened = None
    if opened is not None:
        out.append((opened, None))
    return out
