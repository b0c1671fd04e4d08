"""The failure predictor: features, the federated logistic model, the streaming alerts, the scoring."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from fleetstream.domain.failure_truth import Outage, label, score_alerts
from fleetstream.domain.features import FeatureExtractor, feature_rows
from fleetstream.domain.federated import (
    LogisticModel,
    ModelRound,
    classification_metrics,
    fedavg,
    fit_local,
    initial_model,
    moments,
    pooled_standardisation,
    site_of,
    train_federated,
)
from fleetstream.domain.predictor import RULE_ID, FailurePredictor, hysteresis_alerts
from fleetstream.domain.windows import WindowAggregate

MIN = 60_000_000


def _model(coef: list[float], intercept: float, names: tuple[str, ...] = ("a", "b")) -> LogisticModel:
    return LogisticModel(names, [0.0] * len(names), [1.0] * len(names), coef, intercept)


# -- federated averaging -------------------------------------------------------------------------


def test_fedavg_is_the_exact_weighted_mean_of_coefficients_and_intercepts() -> None:
    updates = [(_model([1.0, -2.0], 0.5), 10), (_model([4.0, 2.0], -1.0), 30), (_model([7.0, 0.0], 2.0), 60)]
    m = fedavg(updates)
    # (1*10 + 4*30 + 7*60) / 100 = 5.5; (-2*10 + 2*30 + 0) / 100 = 0.4; (5 - 30 + 120) / 100 = 0.95
    assert m.coef == pytest.approx([5.5, 0.4], abs=1e-12)
    assert m.intercept == pytest.approx(0.95, abs=1e-12)


def test_fedavg_ignores_empty_sites_and_refuses_mismatched_models() -> None:
    m = fedavg([(_model([2.0, 2.0], 1.0), 5), (_model([100.0, 100.0], 100.0), 0)])
    assert (m.coef, m.intercept) == ([2.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="at least one update"):
        fedavg([(_model([1.0, 1.0], 0.0), 0)])
    other = LogisticModel(("a", "b"), [1.0, 0.0], [1.0, 1.0], [0.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="standardisation"):
        fedavg([(_model([1.0, 1.0], 0.0), 1), (other, 1)])


def test_pooled_standardisation_from_site_moments_equals_the_pooled_rows() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(5.0, 2.0, (n, 3)) for n in (7, 40, 13)]
    mean, scale = pooled_standardisation([moments(p) for p in parts])
    every = np.vstack(parts)
    assert mean == pytest.approx(every.mean(axis=0).tolist(), rel=1e-12)
    assert scale == pytest.approx(every.std(axis=0).tolist(), rel=1e-9)


def test_a_local_fit_separates_a_separable_set() -> None:
    rng = np.random.default_rng(7)
    x = np.vstack([rng.normal(-2.0, 0.5, (100, 2)), rng.normal(2.0, 0.5, (100, 2))])
    y = np.array([0] * 100 + [1] * 100)
    model, n = fit_local(x, y, initial_model(("a", "b"), [moments(x)]), epochs=200)
    assert n == 200
    predicted = (model.predict(x) >= 0.5).astype(int)
    assert (predicted == y).all()
    assert model.score(x[0].tolist()) == pytest.approx(float(model.predict(x[:1])[0]), rel=1e-12)


def test_federated_rounds_reach_the_central_fit_on_iid_sites() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(0.0, 1.0, (600, 2))
    y = (x @ np.array([1.5, -1.0]) + rng.normal(0.0, 0.5, 600) > 0).astype(float)
    sites = {f"s{i}": (x[i::3], y[i::3]) for i in range(3)}
    rounds = train_federated(
        sites, ("a", "b"), rounds=40, epochs=5, evaluate=lambda m: classification_metrics(m.predict(x), y)
    )
    central, _ = fit_local(x, y, initial_model(("a", "b"), [moments(x)]), epochs=200)
    assert [r.round for r in rounds] == list(range(1, 41))
    assert {(r.n_sites, r.n_samples) for r in rounds} == {(3, 600)}
    assert rounds[-1].model().coef == pytest.approx(central.coef, abs=0.05)
    assert rounds[-1].metrics["log_loss"] < rounds[0].metrics["log_loss"]


def test_model_round_round_trips_through_json() -> None:
    r = ModelRound(3, "v-r3", _model([1.0, 2.0], 0.5).to_dict(), 4, 1234, {"auc": 0.9}, 1_700_000_000_000_000)
    back = ModelRound.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    assert back.model() == _model([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="unknown format"):
        LogisticModel.from_dict({**r.params, "format": "other"})


def test_auc_counts_ties_as_half() -> None:
    m = classification_metrics(np.array([0.1, 0.5, 0.5, 0.9]), np.array([0, 0, 1, 1]))
    # pairs (pos, neg): (0.5, 0.1) 1, (0.5, 0.5) 0.5, (0.9, 0.1) 1, (0.9, 0.5) 1 → 3.5 / 4
    assert m["auc"] == 0.875


def test_site_of_is_stable_and_spreads_devices() -> None:
    sites = [site_of(f"host-{i:04d}", 4) for i in range(400)]
    assert sites == [site_of(f"host-{i:04d}", 4) for i in range(400)]
    assert set(sites) == {"site-0", "site-1", "site-2", "site-3"}
    assert min(sites.count(s) for s in set(sites)) > 60


# -- features ------------------------------------------------------------------------------------


def test_features_compare_recent_windows_with_the_device_baseline() -> None:
    fx = FeatureExtractor(("fan",), horizon=2)
    for minute, mean in enumerate([3000.0, 3000.0, 3000.0, 2400.0, 2100.0]):
        fx.on_window("h", "fan", (minute + 1) * MIN, mean, 10.0)
    level, delta, rel, slope, spread = fx.features("h")
    assert (level, delta, rel, slope, spread) == (2100.0, -900.0, -0.3, -300.0, 10.0)
    assert fx.on_window("h", "fan", 5 * MIN, 0.0, None) is False  # already seen: ignored
    assert fx.on_window("h", "other", 6 * MIN, 0.0, None) is False


def test_a_silence_restarts_the_recent_history_but_keeps_the_baseline() -> None:
    fx = FeatureExtractor(("t",), horizon=3, gap_windows=5)
    for minute in range(6):
        fx.on_window("h", "t", (minute + 1) * MIN, 50.0, None)
    fx.on_window("h", "t", 30 * MIN, 80.0, None)  # back after a long silence
    assert fx.features("h") == [80.0, 30.0, 0.6, 0.0, 0.0]  # one recent window: no slope


def test_feature_rows_only_once_every_sensor_has_a_window() -> None:
    fx = FeatureExtractor(("a", "b"), horizon=2)
    windows = [(MIN, {"a": (1.0, None)}), (2 * MIN, {"a": (1.0, None), "b": (5.0, 0.5)})]
    times, rows = feature_rows(fx, "d", windows)
    assert times == [2 * MIN]
    assert rows == [[1.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.5]]


# -- the streaming predictor ---------------------------------------------------------------------


def _predictor(open_at: float = 0.5, clear_at: float = 0.3) -> FailurePredictor:
    fx = FeatureExtractor(("t",), horizon=2)
    # risk = sigmoid(delta - 5): 0.5 exactly 5 above the baseline
    model = LogisticModel(fx.names, [0.0] * 5, [1.0] * 5, [0.0, 1.0, 0.0, 0.0, 0.0], -5.0)
    return FailurePredictor(model, fx, open_at=open_at, clear_at=clear_at)


def test_the_predictor_opens_once_while_the_risk_hovers_and_clears_below_clear_at() -> None:
    fp = _predictor()
    hover = [55.5, 55.3, 55.8, 55.4, 55.9, 55.6]
    means = [50.0] * 25 + hover + [50.0, 50.0]
    out, risks = [], []
    for m, v in enumerate(means):
        out += fp.on_window("d", "t", (m + 1) * MIN, v, None)
        risks.append(fp.score("d"))
    hovering = risks[25:31]
    assert min(hovering) < 0.5 <= max(hovering)  # it crosses the threshold back and forth
    assert min(hovering) >= 0.3
    assert [(t.kind, t.ts // MIN, t.rule_id, t.device_id) for t in out] == [
        ("open", 26, RULE_ID, "d"),
        ("clear", 32, RULE_ID, "d"),
    ]
    assert out[0].first_value == risks[25]
    assert (out[1].first_value, out[1].last_value) == (risks[25], risks[31])
    assert fp.active() == {}


def test_the_predictor_restores_from_a_snapshot_mid_alert() -> None:
    fp = _predictor()
    for m, v in enumerate([50.0, 50.0, 50.0, 58.0]):
        fp.on_window("d", "t", (m + 1) * MIN, v, None)
    assert fp.active() == {"d": 4 * MIN}
    state = json.loads(json.dumps(fp.snapshot()))

    again = _predictor()
    again.restore(state)
    assert again.active() == {"d": 4 * MIN}
    assert again.score("d") == fp.score("d")
    assert again.on_window("d", "t", 5 * MIN, 57.0, None) == []  # still open: no second open
    cleared = again.on_window("d", "t", 6 * MIN, 50.0, None)
    assert [(t.kind, t.ts) for t in cleared] == [("clear", 6 * MIN)]
    assert fp.on_window("d", "t", 5 * MIN, 57.0, None) == []
    assert [(t.kind, t.ts) for t in fp.on_window("d", "t", 6 * MIN, 50.0, None)] == [("clear", 6 * MIN)]


def test_the_predictor_takes_window_aggregates_and_skips_fleet_windows() -> None:
    fp = _predictor()
    out = []
    for m, v in enumerate([50.0, 50.0, 50.0, 60.0]):
        w = WindowAggregate("t", "d", MIN, m * MIN)
        w.add(v, m * MIN + 1)
        fleet = WindowAggregate("t", "*", MIN, m * MIN)
        fleet.add(99.0, m * MIN + 1)
        out += fp.on_windows([w, fleet])
    assert [(t.kind, t.device_id, t.ts) for t in out] == [("open", "d", 4 * MIN)]
    assert "*" not in fp.extractor


def test_the_predictor_scores_every_window_end_however_the_windows_are_batched() -> None:
    """Three minutes closed in one call open and clear as three calls of one minute each do (the
    embedded engine and a cluster worker cut the same stream into different batches)."""
    means = {"a": [50.0, 50.0, 50.0, 60.0, 50.0, 50.0], "b": [50.0, 50.0, 50.0, 50.0, 61.0, 50.0]}

    def windows(minutes: range) -> list[WindowAggregate]:
        out = []
        for m in minutes:
            for device in ("b", "a"):  # not in time order within a call
                w = WindowAggregate("t", device, MIN, m * MIN)
                w.add(means[device][m], m * MIN + 1)
                out.append(w)
        return out

    one_by_one, batched = _predictor(), _predictor()
    singles = [t for m in range(6) for t in one_by_one.on_windows(windows(range(m, m + 1)))]
    together = batched.on_windows(windows(range(3))) + batched.on_windows(windows(range(3, 6)))
    expected = [("open", "a", 4), ("open", "b", 5), ("clear", "a", 5), ("clear", "b", 6)]
    assert [(t.kind, t.device_id, t.ts // MIN) for t in singles] == expected
    assert [(t.kind, t.device_id, t.ts // MIN) for t in together] == expected
    assert batched.snapshot() == one_by_one.snapshot()


def test_the_predictor_refuses_bad_thresholds_and_foreign_models() -> None:
    with pytest.raises(ValueError, match="clear_at < open_at"):
        _predictor(open_at=0.5, clear_at=0.5)
    with pytest.raises(ValueError, match="features"):
        FailurePredictor(_model([1.0, 1.0], 0.0), FeatureExtractor(("t",)))
    assert FailurePredictor().score("anything") == 0.0


def test_hysteresis_alerts_match_the_streaming_predictor() -> None:
    rng = random.Random(5)
    means = [50.0] * 20 + [v + rng.uniform(-1.0, 1.0) for _ in range(4) for v in [60.0] * 3 + [50.0] * 6]
    fp = _predictor(0.6, 0.2)
    opened = [
        t.ts
        for m, v in enumerate(means)
        for t in fp.on_window("d", "t", (m + 1) * MIN, v, None)
        if t.kind == "open"
    ]
    fx = FeatureExtractor(("t",), horizon=2)
    times, rows = feature_rows(fx, "d", [((m + 1) * MIN, {"t": (v, None)}) for m, v in enumerate(means)])
    risks = fp.model.predict(np.asarray(rows)).tolist() if fp.model else []
    assert [a for a, _ in hysteresis_alerts(times, risks, 0.6, 0.2)] == opened
    assert len(opened) > 1


# -- ground truth and scoring --------------------------------------------------------------------


def test_labels_and_scores_against_outages() -> None:
    truth = {
        "a": [Outage("a", 100, 160, 200, None), Outage("a", 500, None, None, 600)],
        "b": [Outage("b", 1000, 1100, 1200, None)],
        "c": [Outage("c", 50, None, None, None)],  # in progress: neither a failure nor a recovery
    }
    assert [label(truth["a"], t) for t in (99, 100, 199, 200, 550)] == [0, 1, 1, 0, 0]
    s = score_alerts({"a": [90, 150, 170, 550], "c": [60]}, truth)
    assert (s.hits, s.false_alarms, s.in_recoveries) == (2, 3, 1)
    assert (s.failures, s.detected, s.lead_times_us) == (2, 1, [50])
    assert (s.precision, s.recall) == (0.4, 0.5)
    assert s.median_lead_s == 50 / 1e6
    assert score_alerts({}, {}).precision == 0.0
