"""Train the failure model shipped in the package (used while the model registry is empty).

It is trained exactly as ``benchmarks/prediction.py`` trains its federated model
(the same simulated host telemetry, device split and threshold choice) on a fixed
seed, then scored once on the held-out test devices; the parameters, the alert
threshold chosen on the validation devices and the test scores are written to
``src/fleetstream/models/default_failure_model.json``.

    python benchmarks/default_model.py            # 600 hosts x 3 h, seed 7: about 30 s
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/prediction.py
from fleetstream.domain.failure_truth import score_alerts
from fleetstream.domain.features import HOST_SENSORS, FeatureExtractor
from fleetstream.domain.federated import classification_metrics, site_of, train_federated
from prediction import CLEAR_RATIO, pick_threshold, rows_of, simulate, stream_alerts

OUT = Path(__file__).resolve().parent.parent / "src" / "fleetstream" / "models" / "default_failure_model.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=600)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--failure-rate", type=float, default=1.0)
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    windows, truth = simulate(args.devices, args.hours, args.seed, args.failure_rate)
    devices = sorted(windows)
    random.Random(args.seed).shuffle(devices)
    n_fit, n_val = int(len(devices) * 0.6), int(len(devices) * 0.15)
    fit_devs, val_devs, test_devs = devices[:n_fit], devices[n_fit : n_fit + n_val], devices[n_fit + n_val :]
    fit_rows, val_rows = rows_of(fit_devs, windows, truth), rows_of(val_devs, windows, truth)
    x_val = np.vstack([r[1] for r in val_rows.values()])
    y_val = np.concatenate([r[2] for r in val_rows.values()])
    by_site: dict[str, list[str]] = {}
    for d in fit_devs:
        by_site.setdefault(site_of(d, args.sites), []).append(d)
    sites = {
        s: (np.vstack([fit_rows[d][1] for d in devs]), np.concatenate([fit_rows[d][2] for d in devs]))
        for s, devs in sorted(by_site.items())
    }
    names = FeatureExtractor(HOST_SENSORS).names
    rounds = train_federated(
        sites,
        names,
        args.rounds,
        args.epochs,
        evaluate=lambda m: classification_metrics(m.predict(x_val), y_val),
        version_prefix="default",
    )
    model = rounds[-1].model()
    grid = [i / 100 for i in range(5, 96, 5)]
    val_series = {d: (t, model.predict(x)) for d, (t, x, _) in val_rows.items()}
    open_at = pick_threshold(val_series, truth, grid, lambda p: p * CLEAR_RATIO)
    score = score_alerts(
        stream_alerts(model, open_at, test_devs, windows), {d: truth.get(d, []) for d in test_devs}
    )
    doc = {
        "format": "fleetstream-default-model-v1",
        "version": f"default-seed{args.seed}",
        "params": model.to_dict(),
        "threshold": open_at,
        "window_s": 60,
        "trained": {
            "by": "benchmarks/default_model.py",
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "hosts": args.devices,
            "hours": args.hours,
            "failure_rate": args.failure_rate,
            "seed": args.seed,
            "sites": args.sites,
            "rounds": args.rounds,
            "epochs": args.epochs,
            "split": {"fit": len(fit_devs), "validation": len(val_devs), "test": len(test_devs)},
        },
        "metrics": {
            "validation_auc": rounds[-1].metrics.get("auc"),
            "validation_log_loss": rounds[-1].metrics["log_loss"],
            "test_precision": score.precision,
            "test_recall": score.recall,
            "test_f1": score.f1,
            "test_median_lead_s": score.median_lead_s,
            "test_failures": score.failures,
            "test_alerts": score.hits + score.false_alarms,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: doc[k] for k in ("version", "threshold", "metrics")}, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
