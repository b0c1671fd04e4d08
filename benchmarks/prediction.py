"""Failure prediction scored against the simulator's ground truth on held-out devices.

Generates host telemetry in-process with the simulator's fleet model (seeded,
simulated time, no server), closes one-minute windows per device and sensor,
and compares, in one run, on the same held-out test devices:

(a) the logistic model trained by federated averaging over S sites, R rounds;
(b) the same model trained centrally on all training rows;
(c) a fixed-threshold rule on the one-minute mean temperature.

Devices are split into train / validation / test before anything is fitted;
the model's alert threshold and the rule's temperature are chosen on the
validation devices (the rule's on train and validation), never on the test
devices. Test alerts come from the streaming :class:`FailurePredictor`.

    python benchmarks/prediction.py            # 1,500 hosts, 4 h: about 2 min
    python benchmarks/prediction.py --quick    # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fleetstream.domain.failure_truth import Outage, Score, label, score_alerts
from fleetstream.domain.features import HOST_SENSORS, FeatureExtractor, feature_rows
from fleetstream.domain.federated import (
    LogisticModel,
    classification_metrics,
    fit_local,
    initial_model,
    moments,
    site_of,
    train_federated,
)
from fleetstream.domain.predictor import FailurePredictor, hysteresis_alerts
from fleetstream.simulator.failures import fleet_outages
from fleetstream.simulator.fleet import Fleet
from fleetstream.simulator.lifecycle import LifecycleOptions

MINUTE_US = 60_000_000
ORIGIN_US = 1_800_000_000 * 1_000_000  # a whole minute: windows start on the minute
SENSORS = (*HOST_SENSORS, "mem_usage")  # windows as the stream has them; the features skip mem_usage
CLEAR_RATIO = 0.6  # clear_at = open_at x this, as FailurePredictor's default
RULE_HYSTERESIS = 2.0  # °C: the rule clears this far below its threshold
Windows = list[tuple[int, dict[str, tuple[float, float | None]]]]


def simulate(
    devices: int, hours: float, seed: int, failure_rate: float
) -> tuple[dict[str, Windows], dict[str, list[Outage]]]:
    """One-minute windows per host (mean, stddev per sensor) and each host's outages, from the fleet model."""
    fleet = Fleet(
        devices, rate=1.0, seed=seed, kinds={"host": 1}, lifecycle=LifecycleOptions(failure_rate=failure_rate)
    )
    index = {d.device_id: i for i, d in enumerate(fleet.devices)}
    sensor_ix = {s: i for i, s in enumerate(SENSORS)}
    minutes = int(hours * 60)
    shape = (len(fleet.devices), len(SENSORS), minutes)
    count = np.zeros(shape, np.int64)
    total, squares = np.zeros(shape), np.zeros(shape)
    for m in range(minutes):
        # One minute's readings at a time, folded into that minute's column (bounded memory).
        dev, sen, val = array("q"), array("q"), array("d")
        for second in range(m * 60, (m + 1) * 60):
            for msg in fleet.advance(float(second), ORIGIN_US + second * 1_000_000):
                event = msg.get("event")
                pairs = event.items() if event is not None else ((msg["sensor"], msg["value"]),)
                d = index[msg["device_id"]]
                for name, value in pairs:
                    s = sensor_ix.get(name)
                    if s is not None:
                        dev.append(d)
                        sen.append(s)
                        val.append(value)
        key = np.frombuffer(dev, np.int64) * len(SENSORS) + np.frombuffer(sen, np.int64)
        v = np.frombuffer(val, np.float64)
        cells = len(fleet.devices) * len(SENSORS)
        count[:, :, m] = np.bincount(key, minlength=cells).reshape(shape[:2])
        total[:, :, m] = np.bincount(key, v, minlength=cells).reshape(shape[:2])
        squares[:, :, m] = np.bincount(key, v * v, minlength=cells).reshape(shape[:2])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = (squares - total * mean) / (count - 1)
    windows: dict[str, Windows] = {}
    for d in fleet.devices:
        c, mu, vv = count[d.index], mean[d.index], var[d.index]
        series: Windows = []
        for m in np.nonzero(c.sum(axis=0))[0]:
            stats = {
                SENSORS[s]: (float(mu[s, m]), float(np.sqrt(max(vv[s, m], 0.0))) if c[s, m] > 1 else None)
                for s in range(len(SENSORS))
                if c[s, m]
            }
            series.append((ORIGIN_US + (int(m) + 1) * MINUTE_US, stats))
        windows[d.device_id] = series

    truth = fleet_outages(fleet, ORIGIN_US)
    return windows, truth


def rows_of(
    devices: Sequence[str], windows: dict[str, Windows], truth: dict[str, list[Outage]]
) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    """Per device: the times, feature rows and labels the streaming extractor yields."""
    out = {}
    for device in devices:
        fx = FeatureExtractor(HOST_SENSORS)
        times, rows = feature_rows(fx, device, windows[device])
        outages = truth.get(device, [])
        y = np.array([label(outages, t) for t in times], np.float64)
        out[device] = (times, np.asarray(rows, np.float64).reshape(len(rows), -1), y)
    return out


def pick_threshold(
    series: dict[str, tuple[list[int], np.ndarray]],
    truth: dict[str, list[Outage]],
    grid: Sequence[float],
    clear: Callable[[float], float],
) -> float:
    """The open threshold of the best F1 over ``grid`` (ties: the higher one) for per-device score series."""
    best = (grid[0], -1.0)
    for open_at in grid:
        warnings = {
            d: [a for a, _ in hysteresis_alerts(t, s.tolist(), open_at, clear(open_at))]
            for d, (t, s) in series.items()
        }
        f1 = score_alerts(warnings, {d: truth.get(d, []) for d in series}).f1
        if f1 >= best[1]:
            best = (open_at, f1)
    return best[0]


def stream_alerts(
    model: LogisticModel, open_at: float, devices: Sequence[str], windows: dict[str, Windows]
) -> dict[str, list[int]]:
    """Run the streaming predictor over the devices' windows in time order: alert openings per device."""
    predictor = FailurePredictor(
        model, FeatureExtractor(HOST_SENSORS), open_at=open_at, clear_at=open_at * CLEAR_RATIO
    )
    events = sorted((end, device, stats) for device in devices for end, stats in windows[device])
    out: dict[str, list[int]] = {d: [] for d in devices}
    for end, device, stats in events:
        for t in predictor.on_device_windows(device, end, stats):
            if t.kind == "open":
                out[device].append(t.ts)
    return out


def rule_alerts(
    threshold: float, devices: Sequence[str], windows: dict[str, Windows]
) -> dict[str, list[int]]:
    """A fixed rule: mean temperature of a minute above ``threshold`` opens, below threshold - 2 °C clears."""
    out = {}
    for d in devices:
        pts = [(end, stats["temperature"][0]) for end, stats in windows[d] if "temperature" in stats]
        alerts = hysteresis_alerts(
            [t for t, _ in pts], [v for _, v in pts], threshold, threshold - RULE_HYSTERESIS
        )
        out[d] = [a for a, _ in alerts]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--failure-rate", type=float, default=1.0, help="degradations per device-hour")
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="local gradient steps per round")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "prediction.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.hours, args.sites, args.rounds = 150, 1.5, 4, 8
    t0 = time.perf_counter()
    windows, truth = simulate(args.devices, args.hours, args.seed, args.failure_rate)
    t_sim = time.perf_counter() - t0

    # The split, by device, before anything is fitted: 60 % fit, 15 % validation, 25 % test.
    devices = sorted(windows)
    random.Random(args.seed).shuffle(devices)
    n_fit, n_val = int(len(devices) * 0.6), int(len(devices) * 0.15)
    fit_devs, val_devs, test_devs = devices[:n_fit], devices[n_fit : n_fit + n_val], devices[n_fit + n_val :]
    fit_rows = rows_of(fit_devs, windows, truth)
    val_rows = rows_of(val_devs, windows, truth)
    x_val = np.vstack([r[1] for r in val_rows.values()])
    y_val = np.concatenate([r[2] for r in val_rows.values()])
    names = FeatureExtractor(HOST_SENSORS).names

    # (a) Federated: each site holds only its own devices' rows.
    by_site: dict[str, list[str]] = {}
    for d in fit_devs:
        by_site.setdefault(site_of(d, args.sites), []).append(d)
    sites = {
        s: (np.vstack([fit_rows[d][1] for d in devs]), np.concatenate([fit_rows[d][2] for d in devs]))
        for s, devs in sorted(by_site.items())
    }
    t1 = time.perf_counter()
    rounds = train_federated(
        sites,
        names,
        args.rounds,
        args.epochs,
        evaluate=lambda m: classification_metrics(m.predict(x_val), y_val),
        version_prefix="bench",
    )
    federated = rounds[-1].model()
    t_fed = time.perf_counter() - t1

    # (b) Central: the same model, all fit rows in one place, as many gradient steps in all.
    x_fit = np.vstack([x for x, _ in sites.values()])
    y_fit = np.concatenate([y for _, y in sites.values()])
    central, _ = fit_local(x_fit, y_fit, initial_model(names, [moments(x_fit)]), args.rounds * args.epochs)

    grid = [i / 100 for i in range(5, 96, 5)]
    results: list[tuple[str, str, Score]] = []
    test_truth = {d: truth.get(d, []) for d in test_devs}
    for name, model in (
        (f"federated ({args.sites} sites x {args.rounds} rounds)", federated),
        ("central", central),
    ):
        val_series = {d: (t, model.predict(x)) for d, (t, x, _) in val_rows.items()}
        open_at = pick_threshold(val_series, truth, grid, lambda p: p * CLEAR_RATIO)
        score = score_alerts(stream_alerts(model, open_at, test_devs, windows), test_truth)
        results.append((name, f"risk >= {open_at:.2f}", score))

    # (c) The fixed rule: its temperature chosen on the training devices (fit and validation).
    temps = {}
    for d in fit_devs + val_devs:
        pts = [(end, st["temperature"][0]) for end, st in windows[d] if "temperature" in st]
        temps[d] = ([t for t, _ in pts], np.array([v for _, v in pts]))
    every = np.concatenate([v for _, v in temps.values()])
    rule_grid = sorted({round(float(q), 1) for q in np.quantile(every, np.linspace(0.80, 0.999, 40))})
    x_rule = pick_threshold(temps, truth, rule_grid, lambda x: x - RULE_HYSTERESIS)
    test_truth = {d: truth.get(d, []) for d in test_devs}
    rule_score = score_alerts(rule_alerts(x_rule, test_devs, windows), test_truth)
    results.append(("fixed rule", f"temperature mean > {x_rule:.1f} °C", rule_score))
    elapsed = time.perf_counter() - t0

    split = (len(fit_devs), len(val_devs), len(test_devs))
    report = _report(args, results, rounds, split, len(y_fit), (t_sim, t_fed, elapsed))
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(
        json.dumps([r.to_dict() for r in rounds], indent=1), encoding="utf-8"
    )
    # The targets: federated within 5 % of central in F1, and better than the fixed rule.
    fed, cen, rule = (s.f1 for _, _, s in results)
    checks = (
        ("federated F1 < 0.95 x central", fed < 0.95 * cen),
        ("federated F1 <= the rule's", fed <= rule),
    )
    missed = [what for what, bad in checks if bad]
    if missed:
        print(f"target missed: {', '.join(missed)} (F1 {fed:.3f} / {cen:.3f} / {rule:.3f})", file=sys.stderr)
    return 1 if missed else 0


def _report(
    args: argparse.Namespace,
    results: list[tuple[str, str, Score]],
    rounds: list[Any],
    split: tuple[int, int, int],
    rows: int,
    timings: tuple[float, float, float],
) -> str:
    t_sim, t_fed, elapsed = timings
    head = (
        f"{args.devices} hosts x {args.hours:g} h simulated (seed {args.seed}, {args.failure_rate:g} "
        f"degradations per device-hour); devices fit/validation/test {split[0]}/{split[1]}/{split[2]}; "
        f"{rows:,} training rows; simulation {t_sim:.0f} s, federated training {t_fed:.1f} s, "
        f"all {elapsed:.0f} s"
    )
    lines = [
        head,
        "",
        "| model | alert when | alerts | hits | false alarms (in recoveries) | precision | failures "
        "| detected | recall | median lead |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, when, s in results:
        lead = "-" if s.median_lead_s is None else f"{s.median_lead_s:.0f} s"
        lines.append(
            f"| {name} | {when} | {s.hits + s.false_alarms} | {s.hits} "
            f"| {s.false_alarms} ({s.in_recoveries}) | {s.precision:.2f} | {s.failures} | {s.detected} "
            f"| {s.recall:.2f} | {lead} |"
        )
    lines += [
        "",
        "federated rounds (validation devices):",
        "",
        "| round | log loss | AUC |",
        "|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.round} | {r.metrics['log_loss']:.4f} | {r.metrics.get('auc', float('nan')):.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
