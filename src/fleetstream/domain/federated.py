"""A logistic-regression failure model, trained locally per site and combined by federated averaging.

Sites (groups of devices: a gateway, a plant, a hash of the device id) each
hold their own devices' feature rows. Only numbers about the model leave a
site: first the sums needed for the shared standardisation (count, sum and
sum of squares per feature), then, every round, the parameters fitted
locally from the current global model and the number of rows behind them.
The coordinator averages the parameters weighted by those counts (FedAvg,
McMahan et al. 2017) and starts the next round from the average.

Example:
    >>> a = LogisticModel(("x",), [0.0], [1.0], [1.0], 0.0)
    >>> b = LogisticModel(("x",), [0.0], [1.0], [4.0], 1.0)
    >>> m = fedavg([(a, 1), (b, 2)])
    >>> m.coef, m.intercept
    ([3.0], 0.6666666666666666)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]
FORMAT = "logistic-v1"
Moments = tuple[int, list[float], list[float]]  # a site's row count, per-feature sums and sums of squares


@dataclass(slots=True)
class LogisticModel:
    """``P(failure) = sigmoid(intercept + coef · (x - mean) / scale)``; standardisation included.

    Attributes:
        features: the feature names, in the order of ``coef``.
        mean, scale: per-feature standardisation (the same at every site).
        coef, intercept: the fitted weights.
    """

    features: tuple[str, ...]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    def predict(self, x: Matrix) -> Matrix:
        """Failure probability of each row of ``x`` (rows × features)."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale @ np.asarray(self.coef) + self.intercept
        p: Matrix = 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))
        return p

    def score(self, row: Sequence[float]) -> float:
        """Failure probability of one feature row."""
        z = self.intercept + sum(
            c * (v - m) / s for c, v, m, s in zip(self.coef, row, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters (what leaves a site)."""
        return {
            "format": FORMAT,
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogisticModel:
        """Parameters from :meth:`to_dict`.

        Raises:
            ValueError: another format, or lists of different lengths.
        """
        if d.get("format") != FORMAT:
            msg = f"model parameters: unknown format {d.get('format')!r}, expected {FORMAT!r}"
            raise ValueError(msg)
        features = tuple(str(f) for f in d["features"])
        lists = [[float(v) for v in d[k]] for k in ("mean", "scale", "coef")]
        if any(len(v) != len(features) for v in lists):
            msg = "model parameters: mean, scale and coef must have one value per feature"
            raise ValueError(msg)
        return cls(features, lists[0], lists[1], lists[2], float(d["intercept"]))


@dataclass(frozen=True, slots=True)
class ModelRound:
    """One round of federated training: the averaged model and how it scored.

    Attributes:
        round: 1, 2, ... within a training run.
        version: the model's version, e.g. ``"20261129T2130Z-r3"``: unique across runs.
        params: :meth:`LogisticModel.to_dict` of the averaged model.
        n_sites: how many sites contributed.
        n_samples: how many feature rows were behind the average.
        metrics: e.g. ``{"log_loss": 0.21, "auc": 0.93}`` on the validation rows.
        created_at: when the round finished (µs since the epoch, UTC).
    """

    round: int
    version: str
    params: dict[str, Any]
    n_sites: int
    n_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "round": self.round,
            "version": self.version,
            "params": self.params,
            "n_sites": self.n_sites,
            "n_samples": self.n_samples,
            "metrics": dict(self.metrics),
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelRound:
        """The inverse of :meth:`to_dict`."""
        return cls(
            int(d["round"]),
            str(d["version"]),
            dict(d["params"]),
            int(d["n_sites"]),
            int(d["n_samples"]),
            {str(k): float(v) for k, v in d.get("metrics", {}).items()},
            int(d.get("created_at", 0)),
        )

    def model(self) -> LogisticModel:
        """The round's model."""
        return LogisticModel.from_dict(self.params)


def site_of(device_id: str, sites: int) -> str:
    """The default site of a device: a stable hash of its id into ``sites`` groups.

    Example:
        >>> site_of("host-0001", 4), site_of("host-0001", 4) == site_of("host-0001", 4)
        ('site-1', True)
    """
    return f"site-{zlib.crc32(device_id.encode()) % sites}"


def moments(x: Matrix) -> Moments:
    """What a site shares for the standardisation: row count, per-feature sum and sum of squares."""
    x = np.asarray(x, np.float64)
    return len(x), x.sum(axis=0).tolist(), (x * x).sum(axis=0).tolist()


def pooled_standardisation(parts: Sequence[Moments]) -> tuple[list[float], list[float]]:
    """The mean and standard deviation over all sites' rows, from their :func:`moments` alone."""
    n = sum(p[0] for p in parts)
    if n == 0:
        msg = "no rows to standardise"
        raise ValueError(msg)
    total = np.sum([p[1] for p in parts], axis=0)
    squares = np.sum([p[2] for p in parts], axis=0)
    mean = total / n
    var = np.maximum(squares / n - mean * mean, 0.0)
    scale = np.where(var > 1e-12, np.sqrt(var), 1.0)  # a constant feature: leave it unscaled
    return mean.tolist(), scale.tolist()


def fit_local(
    x: Matrix,
    y: npt.NDArray[Any],
    init: LogisticModel,
    epochs: int,
    *,
    lr: float = 0.5,
    l2: float = 1e-3,
    pos_weight: float = 1.0,
) -> tuple[LogisticModel, int]:
    """Fit from ``init`` by ``epochs`` steps of full-batch gradient descent; the model and the row count.

    The standardisation of ``init`` is kept (it is shared by every site). ``pos_weight``
    weighs failure rows up when they are rare.
    """
    xs = (np.asarray(x, np.float64) - init.mean) / init.scale
    yv = np.asarray(y, np.float64)
    w = np.asarray(init.coef, np.float64).copy()
    b = float(init.intercept)
    n = len(yv)
    if n == 0:
        return init, 0
    weights = np.where(yv > 0, pos_weight, 1.0)
    norm = weights.sum()
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-np.clip(xs @ w + b, -60.0, 60.0)))
        err = (p - yv) * weights
        w -= lr * (xs.T @ err / norm + l2 * w)
        b -= lr * float(err.sum() / norm)
    return LogisticModel(init.features, list(init.mean), list(init.scale), w.tolist(), b), n


def fedavg(updates: Sequence[tuple[LogisticModel, int]]) -> LogisticModel:
    """The average of the sites' models weighted by their row counts.

    Raises:
        ValueError: no update with rows, or models with different features or standardisation.
    """
    used = [(m, n) for m, n in updates if n > 0]
    if not used:
        msg = "federated averaging needs at least one update with rows"
        raise ValueError(msg)
    first = used[0][0]
    for m, _ in used[1:]:
        if m.features != first.features or m.mean != first.mean or m.scale != first.scale:
            msg = "federated averaging: the sites' models differ in features or standardisation"
            raise ValueError(msg)
    total = sum(n for _, n in used)
    coef = np.sum([np.asarray(m.coef) * (n / total) for m, n in used], axis=0)
    intercept = sum(m.intercept * n for m, n in used) / total
    return LogisticModel(first.features, list(first.mean), list(first.scale), coef.tolist(), intercept)


def initial_model(features: Sequence[str], parts: Sequence[Moments]) -> LogisticModel:
    """An all-zero model with the pooled standardisation of the sites' :func:`moments`."""
    mean, scale = pooled_standardisation(parts)
    return LogisticModel(tuple(features), mean, scale, [0.0] * len(features), 0.0)


def train_federated(
    sites: Mapping[str, tuple[Matrix, npt.NDArray[Any]]],
    features: Sequence[str],
    rounds: int,
    epochs: int,
    *,
    evaluate: Callable[[LogisticModel], dict[str, float]] | None = None,
    version_prefix: str = "v",
    now_us: int = 0,
    **fit: Any,
) -> list[ModelRound]:
    """Federated rounds over ``sites`` (name → rows, labels); one :class:`ModelRound` per round.

    Each site sees only its own rows; the coordinator sees only moments, models and counts.
    """
    if rounds < 1 or epochs < 1:
        msg = f"rounds and epochs must be >= 1, got {rounds} and {epochs}"
        raise ValueError(msg)
    model = initial_model(features, [moments(x) for x, _ in sites.values()])
    out: list[ModelRound] = []
    for r in range(1, rounds + 1):
        updates = [fit_local(x, y, model, epochs, **fit) for x, y in sites.values()]
        model = fedavg(updates)
        metrics = evaluate(model) if evaluate is not None else {}
        n_sites = sum(1 for _, n in updates if n > 0)
        n_samples = sum(n for _, n in updates)
        version = f"{version_prefix}-r{r}"
        out.append(ModelRound(r, version, model.to_dict(), n_sites, n_samples, metrics, now_us))
    return out


def classification_metrics(p: Matrix, y: npt.NDArray[Any]) -> dict[str, float]:
    """Log loss and ROC AUC (ties averaged) of probabilities ``p`` for labels ``y``."""
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    yv = np.asarray(y, np.float64)
    out = {"log_loss": float(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p))), "rows": float(len(yv))}
    pos, neg = int(yv.sum()), int(len(yv) - yv.sum())
    if pos and neg:
        _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
        ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their mean
        out["auc"] = float((ranks[yv > 0].sum() - pos * (pos + 1) / 2) / (pos * neg))
    return out
