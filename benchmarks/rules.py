"""Rules on one core: readings per second of ``RuleBook.on_batch`` with 10 rules over 100,000 devices.

Everything runs in this process, single-threaded, on in-memory batches (no HTTP, bus or store).
The fleet (``--devices``, default 100,000): 40% thermostats (temperature, humidity), 30%
trackers (latitude, longitude, speed: a random walk around a home point, crossing a grid of 12
zones now and then), 30% hosts (cpu, memory, disk); each device sends one message every 5 s of
event time at its own phase. 0.2% of thermostats run hot, 0.2% of hosts spike, 0.5% of devices go
silent after the first 20 s. Batches hold whole messages, ~5,000 rows each. After each batch
the watermark (event time of the batch's last message, less 2 s) goes to ``RuleBook.on_time``.

Rules (10): 4 ranges (thermostat temperature > 30 for 30 s clearing below 28, humidity outside
[15, 85], host cpu > 95 for 60 s, host cpu > 90 and memory > 90), 2 zone rules (stay inside
the tracker region, stay outside one zone), 2 offline (whole fleet after 60 s, hosts after 30 s),
2 anomaly (thermostat temperature, host cpu; k = 5 after 5 readings).

Measured in the same run, on the same batches, CPU seconds of this process:

1. **StreamProcessors alone** (the baseline): ``StreamProcessors(StreamSettings()).on_batch``
   (live stats, windows 10 s + 1 min, twins), as the engine runs them after a commit.
2. **StreamProcessors + RuleBook**: the same, then ``RuleBook.on_batch`` and ``on_time``.
3. **RuleBook alone** (target >= 200,000 readings/CPU-s).

    .venv/bin/python benchmarks/rules.py [--quick] [--devices 100000] [--seconds 90]

``--quick`` (20,000 devices, 40 s) takes ~30 s; the default ~3 min on 2 cores. Writes the table
to ``benchmarks/out/rules.md``; exits non-zero when the target is missed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from _harness import OUT, machine, source_revision, stop_on_sigterm, table
from fleetstream.config import StreamSettings
from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.rulebook import RuleBook, parse_rule, parse_zone
from fleetstream.engine.processors import StreamProcessors

S = 1_000_000
T0 = 1_767_225_600 * S
TARGET_RATE = 200_000
PERIOD_S = 5
KINDS = (  # (device type, share of the fleet, sensors)
    ("Thermostat", 0.4, ("temperature", "humidity")),
    ("Tracker", 0.3, ("latitude", "longitude", "speed")),
    ("Host", 0.3, ("cpu", "memory", "disk")),
)
RULES: list[dict[str, Any]] = [
    {"id": "hot", "scope": {"device_type": "Thermostat"},
     "when": {"sensor": "temperature", "op": ">", "threshold": 30, "for_us": 30 * S, "clear_at": 28}},
    {"id": "humid", "when": {"sensor": "humidity", "op": "outside", "threshold": [15, 85]}},
    {"id": "cpu", "when": {"sensor": "cpu", "op": ">", "threshold": 95, "for_us": 60 * S}},
    {"id": "busy", "when": {"all": [{"sensor": "cpu", "op": ">", "threshold": 90},
                                    {"sensor": "memory", "op": ">", "threshold": 90}]}},
    {"kind": "zone", "id": "region", "zone_id": "region", "must": "stay_inside"},
    {"kind": "zone", "id": "keep-out", "zone_id": "z-1-1", "must": "stay_outside"},
    {"kind": "offline", "id": "silent", "after_s": 60},
    {"kind": "offline", "id": "host-silent", "after_s": 30, "scope": {"device_type": "Host"}},
    {"kind": "anomaly", "id": "temp-anomaly", "sensor": "temperature", "k": 5, "warmup": 5},
    {"kind": "anomaly", "id": "cpu-anomaly", "sensor": "cpu", "k": 5, "warmup": 5},
]  # fmt: skip
ZONES: list[dict[str, Any]] = [
    {"id": "region", "rectangle": {"south": 40, "west": 0, "north": 50, "east": 20}},
    *({"id": f"z-{i}-{j}", "rectangle": {"south": 41 + 3 * i, "west": 1 + 4 * j, "north": 43 + 3 * i,
       "east": 4 + 4 * j}} for i in range(3) for j in range(4)),
]  # fmt: skip


def stream(devices: int, seconds: int, batch_rows: int = 5_000, seed: int = 7) -> Iterator[tuple[Batch, int]]:
    """``(batch, watermark)`` for ``seconds`` of event time (see the module docstring)."""
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([0] + [round(devices * share) for _, share, _ in KINDS])
    bounds[-1] = devices
    names = [f"dev-{i:06d}" for i in range(devices)]
    phase = rng.integers(0, PERIOD_S * S, devices)
    order = np.argsort(phase)
    home = np.c_[rng.uniform(41, 49, devices), rng.uniform(1, 19, devices)]
    pos = home.copy()
    hot = rng.random(devices) < 0.002
    silent = rng.random(devices) < 0.005
    pending: list[tuple[str, int, str, float, str]] = []
    for period in range(seconds // PERIOD_S):
        for d in order.tolist():
            ts = T0 + period * PERIOD_S * S + int(phase[d])
            if silent[d] and period * PERIOD_S >= 20:
                continue
            k = int(np.searchsorted(bounds, d, side="right")) - 1
            kind, _, sensors = KINDS[k]
            if kind == "Thermostat":
                vals = [rng.normal(35.0 if hot[d] else 21.0, 0.5), rng.normal(45, 5)]
            elif kind == "Tracker":
                pos[d] += rng.normal(0, 0.05, 2)
                vals = [pos[d, 0], pos[d, 1], abs(rng.normal(10, 3))]
            else:
                cpu = 97.0 if hot[d] else min(100.0, abs(rng.normal(40, 10)))
                vals = [cpu, rng.normal(50, 10), rng.normal(60, 5)]
            pending += [(names[d], ts, s, float(v), kind) for s, v in zip(sensors, vals, strict=True)]
            if len(pending) >= batch_rows:
                yield _batch(pending), ts - 2 * S
                pending = []
    if pending:
        yield _batch(pending), pending[-1][1]


def _batch(rows: list[tuple[str, int, str, float, str]]) -> Batch:
    dev, ts, sensor, value, kind = (list(c) for c in zip(*rows, strict=True))
    n = len(rows)
    return Batch(device_id=dev, ts=ts, sensor=sensor, value=value, unit=[None] * n, device_type=kind,
                 msg_id=[None] * n, kind=["telemetry"] * n, msg=list(message_numbers(n)),
                 received_at=ts, seq=list(range(n)), messages_count=n)  # fmt: skip


def run(batches: list[tuple[Batch, int]], procs: bool, rules: bool) -> tuple[float, int, Counter[str]]:
    """CPU seconds over the batches, readings, and the transitions per rule and crossings produced."""
    sp = StreamProcessors(StreamSettings()) if procs else None
    book = RuleBook([parse_rule(r) for r in RULES], [parse_zone(z) for z in ZONES]) if rules else None
    cpu, rows, produced = 0.0, 0, Counter[str]()
    for batch, now in batches:
        c0 = time.process_time()
        if sp is not None:
            sp.on_batch(batch, now)
        if book is not None:
            out = book.on_batch(batch.device_id, batch.device_type, batch.sensor, batch.value, batch.ts)
            later = book.on_time(now)
            produced.update(f"{t.rule_id} {t.kind}" for t in out.transitions + later.transitions)
            produced["zone crossings"] += len(out.crossings)
        cpu += time.process_time() - c0
        rows += len(batch)
    return cpu, rows, produced


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20,000 devices, 40 s (not for the record)")
    p.add_argument("--devices", type=int, help="fleet size (default 100000; quick 20000)")
    p.add_argument("--seconds", type=int, help="event time of the stream (default 90; quick 40)")
    args = p.parse_args(argv)
    devices = args.devices or (20_000 if args.quick else 100_000)
    seconds = args.seconds or (40 if args.quick else 90)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    stop_on_sigterm()
    began = datetime.now(UTC)
    head = [
        f"rules benchmark, {began:%Y-%m-%d %H:%M} UTC, fleetstream at {source_revision()}",
        f"machine: {machine()}, numpy {np.__version__}",
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"stream: {devices:,} devices, {seconds} s of event time, {len(RULES)} rules, {len(ZONES)} zones",
    ]
    print("\n".join(head), flush=True)
    batches = list(stream(devices, seconds))
    results = {}
    for label, procs, rules in (
        ("StreamProcessors alone (baseline)", True, False),
        ("StreamProcessors + RuleBook", True, True),
        ("RuleBook alone", False, True),
    ):
        results[label] = run(batches, procs, rules)
    base_cpu = results["StreamProcessors alone (baseline)"][0]
    rows_out = []
    for label, (cpu, rows, produced) in results.items():
        rows_out.append([label, f"{rows:,}", f"{cpu:.2f}", f"{rows / cpu:,.0f}", f"{cpu / base_cpu:.2f}×",
                         f"{produced.total():,}" if "RuleBook" in label else ""])  # fmt: skip
    heads = ["pipeline", "readings", "CPU s", "readings/CPU-s", "CPU / baseline", "transitions + crossings"]
    text = table(heads, rows_out)
    cpu, rows, produced = results["RuleBook alone"]
    text += "\n\nproduced: " + ", ".join(f"{k} {v:,}" for k, v in sorted(produced.items()))
    met = rows / cpu >= TARGET_RATE
    verdict = f"RuleBook alone {rows / cpu:,.0f} readings/CPU-s (target >= {TARGET_RATE:,}): " + (
        "met" if met else "MISSED"
    )
    print("\n" + text + "\n\n" + verdict)
    OUT.mkdir(exist_ok=True)
    (OUT / "rules.md").write_text("\n".join([*head, "", text, "", verdict, ""]))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
