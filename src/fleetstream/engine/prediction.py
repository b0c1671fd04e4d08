"""The predictor stage of the stream processors: closed windows → failure risk → alerts.

The window processor emits each window when the watermark passes its end (version 1)
and again for every late update within the allowed lateness (versions 2, 3, ...).
:class:`PredictionStage` takes the per-device windows of the predictor's size (one
minute by default) and feeds each window's *first* emission to a
:class:`~fleetstream.domain.predictor.FailurePredictor`: the risk is scored as soon as
a minute closes, and a later version (a few late readings) would only re-score a minute
the features have already moved past, so it is skipped (the extractor keeps windows in
end order). Fleet-wide windows and other sizes are ignored.

The predictor's transitions are :class:`~fleetstream.domain.rules.RuleTransition` objects
of the rule ``failure_predicted``; the processors send them through the rule stage's
alert path (alert book, device events, live stream, webhooks-less). The risk itself is
not a device event (it changes every minute for every device): the twin's JSON shows it
from :meth:`PredictionStage.risk`, and it is in the checkpoint with the predictor's state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fleetstream.domain.features import HOST_SENSORS, FeatureExtractor
from fleetstream.domain.federated import LogisticModel
from fleetstream.domain.predictor import FailurePredictor
from fleetstream.domain.rules import RuleTransition
from fleetstream.domain.window_records import ALL_DEVICES, WindowAggregate

DEFAULT_MODEL_FILE = "default_failure_model.json"
DEFAULT_THRESHOLD = 0.5  # a registry round that names no validated threshold
SNAPSHOT_FORMAT = 1
CLEAR_RATIO = 0.6  # an alert clears below this share of the threshold (FailurePredictor's default)


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The model the stage scores with and where it came from.

    Attributes:
        model: the logistic model.
        threshold: the risk that opens an alert (the model's validated one unless set).
        round: the registry round (None: the model shipped in the package).
        version: the round's version, or the shipped model's.
    """

    model: LogisticModel
    threshold: float
    round: int | None
    version: str


def default_model() -> ModelChoice:
    """The model shipped in the package (docs/prediction.md says how it was trained)."""
    text = resources.files("fleetstream").joinpath("models", DEFAULT_MODEL_FILE).read_text("utf-8")
    doc = json.loads(text)
    return ModelChoice(
        LogisticModel.from_dict(doc["params"]), float(doc["threshold"]), None, str(doc["version"])
    )


class PredictionStage:
    """Failure risk per device from closed windows; see the module docstring.

    Args:
        size_us: the window size the predictor reads (the model was trained on it).
    """

    def __init__(self, size_us: int = 60_000_000) -> None:
        self.size_us = size_us
        self.predictor: FailurePredictor | None = None  # None: prediction is off
        self.choice: ModelChoice | None = None
        self._scored: dict[str, tuple[int, int | None, str]] = {}  # device → (at, round, version)
        self._changed: set[str] = set()  # scored since take_changed (not state: re-made by a replay)

    @property
    def enabled(self) -> bool:
        """Whether a model is set."""
        return self.predictor is not None

    def set_model(self, choice: ModelChoice, threshold: float | None = None) -> None:
        """Score with ``choice`` from the next window on (features and open alerts are kept).

        Args:
            choice: the model.
            threshold: the risk that opens an alert (None: the model's own).

        Raises:
            ValueError: the model's features are not the host features, or a bad threshold.
        """
        open_at = choice.threshold if threshold is None else threshold
        if not 0.0 < open_at <= 1.0:
            msg = f"the alert threshold must be in (0, 1], got {open_at}"
            raise ValueError(msg)
        if self.predictor is None:
            extractor = FeatureExtractor(HOST_SENSORS, size_us=self.size_us)
            self.predictor = FailurePredictor(
                choice.model, extractor, open_at=open_at, clear_at=open_at * CLEAR_RATIO
            )
        else:
            self.predictor.set_model(choice.model)
            self.predictor.open_at, self.predictor.clear_at = open_at, open_at * CLEAR_RATIO
        self.choice = choice

    def on_windows(self, windows: Iterable[WindowAggregate]) -> list[RuleTransition]:
        """Score the devices whose windows of the predictor's size closed (first versions only)."""
        if self.predictor is None:
            return []
        mine = [
            w for w in windows if w.size_us == self.size_us and w.version == 1 and w.device_id != ALL_DEVICES
        ]
        if not mine:
            return []
        out = self.predictor.on_windows(mine)
        assert self.choice is not None
        stamp = (self.choice.round, self.choice.version)
        for w in mine:
            if w.device_id in self.predictor.extractor and self.predictor.extractor.ready(w.device_id):
                at = max(w.end, self._scored.get(w.device_id, (0, None, ""))[0])
                self._scored[w.device_id] = (at, *stamp)
                self._changed.add(w.device_id)
        return out

    def take_changed(self) -> list[str]:
        """Devices scored since the last call, sorted (a cluster worker stores their risk)."""
        changed, self._changed = sorted(self._changed), set()
        return changed

    def open_alerts(self) -> dict[str, int]:
        """Devices with an open ``failure_predicted`` alert → when it opened (µs)."""
        return {} if self.predictor is None else self.predictor.active()

    def risk(self, device_id: str) -> dict[str, Any] | None:
        """The device's current risk for its twin: score, model round and version, window end (µs)."""
        scored = self._scored.get(device_id)
        if self.predictor is None or scored is None:
            return None
        at, round_, version = scored
        score = self.predictor.score(device_id)
        return {"score": round(score, 4), "model_round": round_, "model_version": version, "at_us": at}

    def scores(self) -> dict[str, float]:
        """Every scored device's current risk."""
        if self.predictor is None:
            return {}
        return {d: self.predictor.score(d) for d in self._scored}

    def forget(self, device_id: str) -> None:
        """Drop a device (left the fleet)."""
        self._scored.pop(device_id, None)
        self._changed.discard(device_id)
        if self.predictor is not None:
            self.predictor.forget(device_id)

    def snapshot(self) -> dict[str, Any] | None:
        """Builtins-only state (None while prediction is off)."""
        if self.predictor is None:
            return None
        return {
            "format": SNAPSHOT_FORMAT,
            "predictor": self.predictor.snapshot(),
            "scored": {d: list(v) for d, v in sorted(self._scored.items())},
        }

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Resume from a :meth:`snapshot` (the model set first; the snapshot's own is replaced by it).

        Raises:
            ValueError: an unknown snapshot format.
        """
        if state is None or self.predictor is None or self.choice is None:
            return
        if state.get("format") != SNAPSHOT_FORMAT:
            msg = f"prediction snapshot: unknown format {state.get('format')!r}"
            raise ValueError(msg)
        self.predictor.restore(state["predictor"])
        self.predictor.set_model(self.choice.model)  # the model chosen at this start wins
        self._scored = {
            str(d): (int(v[0]), None if v[1] is None else int(v[1]), str(v[2]))
            for d, v in state["scored"].items()
        }
