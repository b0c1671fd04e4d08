"""The stream processors on one core: readings per second of dedup, windows, twins and live stats, and memory.

Everything runs in this process, single-threaded, on in-memory ``Batch`` objects (no HTTP, no
bus, no store). The stream: ``--devices`` devices (default 10,000), each sending one message of
3 readings (temperature, pressure, humidity) per second of event time at its own phase within
the second; each message's event time is jittered by up to ±2 s; 5% of the input rows are
re-sent copies of messages 1 to 10 s old, arriving between the others. Batches hold whole
messages, ~5,000 rows each, with ``msg`` numbers (rows of a message adjacent) and
``received_at`` (nominal time + 20 ms) filled; ``seq`` is filled after dedup, as the engine does.
The garbage collector is tuned as ``fleetstream up`` tunes it (``cli.py``).

1. **Throughput** (target >= 300,000 readings/s on one core): per batch, what the engine does
   between the bus and the store and after the commit: ``Engine._deduplicate`` (the real method,
   driven without an event loop: ``Batch.dedup_keys``, ``Deduplicator.classify`` with the default
   horizon, dropping the re-sends), log positions, then ``StreamProcessors(StreamSettings())
   .on_batch`` (live stats, windows of 10 s and 1 min per sensor and per device+sensor, twins).
   Each stage's own time is taken inside the same pass, so the slowest stage shows. Rates are per
   CPU second of this process (numpy runs single-threaded here); wall-clock rates beside them.
   **Baseline in the same run**, on the same batches: a naive pipeline with a Python step per
   row: a dict of keys for dedup; per (size, window start) a dict of lists of values per
   (device, sensor) and per (fleet, sensor), and on close count/sum/min/max/mean/stddev and
   ``np.quantile`` (p50/p95/p99) per window; a dict of last values per device for twins;
   Welford running stats per sensor and per (device, sensor). It has no lateness, versions,
   status timers or events, so it is an optimistic baseline. The windows of both are compared
   (every fleet window and the device windows of 100 devices: count and sum exact, quantiles
   within the sketch's 1%).
Memory is measured in a fresh interpreter per part (so RSS starts clean), the stream built batch
by batch and dropped as it goes, so what stays is what the processor keeps:

2. **Memory per resident twin** (target <= 2 KB): ``--twin-devices`` (100,000) devices with 4
   sensors each, two messages each, through ``TwinProcessor``; tracemalloc (everything the
   processor keeps: twins, their sensor values, device ids, timers, the dirty set), and the RSS
   delta of a first, untraced run.
3. **Dedup memory over time**: ``--dedup-minutes`` (30) minutes of event time of
   ``--dedup-devices`` (10,000) devices sending one reading a second (18M readings, plus 5%
   re-sends) through ``Engine._deduplicate``; every simulated minute the keys held and the RSS
   growth, and every ``--deep-every`` (5) minutes the deep size of the ``Deduplicator``
   (``sys.getsizeof`` over everything reachable from it: within ~3% of tracemalloc here, which
   would slow this part down six-fold).
4. **Memory of the open windows**: ``--window-minutes`` (5) minutes of event time of the
   throughput stream (without re-sends) through ``WindowProcessor``; RSS delta, then tracemalloc.

    .venv/bin/python benchmarks/processors.py [--quick] [--only throughput,twins,dedup,windows]
        [--devices 10000] [--seconds 150] [--passes 2] [--twin-devices 100000]
        [--dedup-devices 10000] [--dedup-minutes 30] [--window-minutes 5]

The default run takes about 4 minutes on 2 cores; ``--quick`` about 30 s (smaller fleets and
spans: not for the record). Exits non-zero when a target is missed or the windows disagree.
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import math
import os
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from types import FunctionType, ModuleType, SimpleNamespace
from typing import Any, cast

import numpy as np

from _harness import machine, source_revision, stop_on_sigterm, table
from fleetstream.config import StreamSettings
from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.twin import TwinProcessor
from fleetstream.domain.windows import ALL_DEVICES, WindowAggregate, WindowProcessor, WindowSettings
from fleetstream.engine.pipeline import Engine
from fleetstream.engine.processors import StreamProcessors, twin_settings, window_settings

S = 1_000_000
T0 = 1_767_225_600 * S  # 2026-01-01 00:00:00 UTC: a whole minute, so windows align with the stream
TARGET_RATE = 300_000
TARGET_TWIN_BYTES = 2048
LATENCY_US = 20_000
RESEND_MAX_AGE_S = 10
SAMPLE_DEVICES = 100  # device windows compared with the baseline's
# (sensor, unit, mean, standard deviation); a fleet uses the first ``sensors`` of them.
SENSORS = (
    ("temperature", "°C", 21.0, 0.5),
    ("pressure", "hPa", 1013.25, 2.0),
    ("humidity", "%", 45.0, 5.0),
    ("co2", "ppm", 600.0, 40.0),
)
DEVICE_TYPE = "Air Monitor"


# -- the stream ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    """The synthetic stream's shape (see the module docstring)."""

    devices: int
    sensors: int = 3
    duplicates: float = 0.05  # share of the input rows that are re-sends
    jitter_us: int = 2 * S
    batch_rows: int = 5_000
    seed: int = 7


def _repeat(items: list[Any], k: int) -> list[Any]:
    """Each item ``k`` times in a row, the same object (as the decoder fills a message's rows)."""
    return items if k == 1 else list(chain.from_iterable(zip(*(items,) * k, strict=True)))


def stream(fleet: Fleet, seconds: int) -> Iterator[tuple[Batch, int]]:
    """``(batch, now_us)`` for ``seconds`` of event time; ``now_us`` is the arrival of its last row."""
    rng = np.random.default_rng(fleet.seed)
    n, k = fleet.devices, fleet.sensors
    names = np.array([f"dev-{i:06d}" for i in range(n)], dtype=object)
    mean = np.array([s[2] for s in SENSORS[:k]])
    sd = np.array([s[3] for s in SENSORS[:k]])
    phase = rng.integers(0, S, n)
    order = np.argsort(phase)  # devices in the order they send within every second
    phase = phase[order]
    per_batch = max(1, round(fleet.batch_rows / k))  # whole messages
    sensor_cycle = [s[0] for s in SENSORS[:k]] * per_batch
    unit_cycle = [s[1] for s in SENSORS[:k]] * per_batch
    resends = round(n * fleet.duplicates / (1 - fleet.duplicates))
    history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=RESEND_MAX_AGE_S)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, k)), np.zeros(0, np.int64))
    dev, ts, val, recv = empty

    def cut(lo: int, hi: int) -> tuple[Batch, int]:
        m = hi - lo
        rows = m * k
        numbers = message_numbers(m)
        received = recv[lo:hi].tolist()
        batch = Batch(
            device_id=_repeat(names[dev[lo:hi]].tolist(), k),
            ts=_repeat(ts[lo:hi].tolist(), k),
            sensor=sensor_cycle[:rows],
            value=val[lo:hi].ravel().tolist(),
            unit=cast(list[str | None], unit_cycle[:rows]),
            device_type=[DEVICE_TYPE] * rows,
            msg_id=[None] * rows,
            kind=["telemetry"] * rows,
            msg=_repeat(list(numbers), k),
            received_at=_repeat(received, k),
            messages_count=m,
        )
        return batch, received[-1]

    for second in range(seconds):
        base = T0 + second * S
        s_ts = base + phase + rng.integers(-fleet.jitter_us, fleet.jitter_us + 1, n)
        s_val = rng.normal(mean, sd, (n, k))
        s_dev, s_arrive = order, phase
        originals = (s_ts, s_val)
        if history and resends:
            # Copies of messages 1..10 s old (as sent then: same event time and values), arriving
            # at random points of this second between the others.
            at = rng.integers(0, len(history), resends) * n + rng.integers(0, n, resends)
            h_ts, h_val = (np.concatenate([h[i] for h in history]) for i in range(2))
            arrive = np.concatenate((phase, rng.integers(0, S, resends)))
            merged = np.argsort(arrive, kind="stable")
            s_arrive = arrive[merged]
            s_dev = np.concatenate((order, order[at % n]))[merged]
            s_ts = np.concatenate((s_ts, h_ts[at]))[merged]
            s_val = np.concatenate((s_val, h_val[at]))[merged]
        history.append(originals)
        dev = np.concatenate((dev, s_dev))
        ts = np.concatenate((ts, s_ts))
        val = np.concatenate((val, s_val))
        recv = np.concatenate((recv, base + s_arrive + LATENCY_US))
        lo = 0
        while len(dev) - lo >= per_batch:
            yield cut(lo, lo + per_batch)
            lo += per_batch
        dev, ts, val, recv = dev[lo:], ts[lo:], val[lo:], recv[lo:]
    if len(dev):
        yield cut(0, len(dev))


# -- fleetstream -----------------------------------------------------------------------------------


class _NoStore:
    """The store ``Engine._deduplicate`` asks about keys older than the horizon: none in this stream."""

    async def stored_keys(self, keys: object) -> set[object]:
        raise AssertionError("a key older than the dedup horizon reached the store lookup")


def deduplicator(dedup: Deduplicator) -> Callable[[Batch], Batch]:
    """``Engine._deduplicate`` on ``dedup``, as a plain function (it awaits only the store, never here)."""
    engine = cast(Engine, SimpleNamespace(dedup=dedup, store=_NoStore()))

    def run(batch: Batch) -> Batch:
        step = Engine._deduplicate(engine, batch)
        try:
            step.send(None)
        except StopIteration as done:
            fresh: Batch = done.value[0]
            return fresh
        step.close()
        raise RuntimeError("Engine._deduplicate waited for the store")

    return run


@dataclass
class Timings:
    """CPU and wall seconds per stage, and the rows each stage handled."""

    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    wall: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def timed(self, stage: str, fn: Callable[..., Any], rows_of: Callable[..., int]) -> Callable[..., Any]:
        """``fn`` adding its own time and the rows of its arguments to ``stage``."""

        def call(*args: Any) -> Any:
            c0, w0 = time.process_time(), time.perf_counter()
            out = fn(*args)
            self.wall[stage] += time.perf_counter() - w0
            self.cpu[stage] += time.process_time() - c0
            self.rows[stage] += rows_of(*args)
            return out

        return call


# (sensor, device, size_us, start) -> (count, sum, p50, p95, p99)
Windows = dict[tuple[str, str, int, int], tuple[int, float, float, float, float]]


def _keep(windows: Windows, sample: frozenset[str], out: list[WindowAggregate]) -> None:
    for w in out:
        if w.device_id == ALL_DEVICES or w.device_id in sample:
            # An emitted window holds readings, so its quantiles are numbers (nan would fail the check).
            p50, p95, p99 = (math.nan if q is None else q for q in w.sketch.quantiles([0.5, 0.95, 0.99]))
            windows[(w.sensor, w.device_id, w.size_us, w.start)] = (w.count, w.sum, p50, p95, p99)


def run_fleetstream(
    fleet: Fleet, seconds: int, sample: frozenset[str]
) -> tuple[Timings, dict[str, int], Windows]:
    """The engine's per-batch work over the stream; stage timings, counts, and the sampled windows."""
    settings = StreamSettings()
    dedup = Deduplicator(settings.dedup_horizon_us)
    procs = StreamProcessors(settings)
    t = Timings()
    deduplicate = t.timed("dedup", deduplicator(dedup), len)
    # The processors' own methods, timed where StreamProcessors.on_batch calls them.
    procs.stats.add = t.timed("live stats", procs.stats.add, lambda d, *_: len(d))  # type: ignore[method-assign]
    procs.windows.on_batch = t.timed("windows", procs.windows.on_batch, lambda d, *_: len(d))  # type: ignore[method-assign]
    procs.twins.on_batch = t.timed("twins", procs.twins.on_batch, lambda b, _: len(b))  # type: ignore[method-assign]
    counts = {"input": 0, "fresh": 0, "windows": 0, "events": 0}
    windows: Windows = {}
    seq = 0
    for batch, now in stream(fleet, seconds):
        c0, w0 = time.process_time(), time.perf_counter()
        fresh = deduplicate(batch)
        fresh.seq = list(range(seq + 1, seq + 1 + len(fresh)))
        seq += len(fresh)
        derived = procs.on_batch(fresh, now)
        t.wall["total"] += time.perf_counter() - w0
        t.cpu["total"] += time.process_time() - c0
        t.rows["total"] += len(batch)
        counts["input"] += len(batch)
        counts["fresh"] += len(fresh)
        counts["windows"] += len(derived.windows)
        counts["events"] += len(derived.events)
        _keep(windows, sample, derived.windows)
    counts["duplicates"] = dedup.duplicates_total
    counts["late"] = sum(procs.late_total.values())
    counts["twins"] = len(procs.twins)
    return t, counts, windows


# -- the naive baseline ----------------------------------------------------------------------------


class Naive:
    """A Python step per row for each stage; windows computed from lists of values when they close."""

    def __init__(self, settings: StreamSettings) -> None:
        ws = window_settings(settings)
        self.sizes, self.ooo, self.ahead = ws.sizes_us, ws.out_of_orderness_us, ws.max_ahead_us
        self.horizon = settings.dedup_horizon_us
        self.seen: dict[tuple[str, str, int], None] = {}
        self.seen_order: deque[tuple[int, tuple[str, str, int]]] = deque()
        self.newest_ts = -(2**63)
        # (size, window start) -> (device or "*", sensor) -> values
        self.groups: dict[tuple[int, int], defaultdict[tuple[str, str], list[float]]] = {}
        self.newest = -(2**63)
        self.twins: dict[str, dict[str, tuple[float, int]]] = {}
        self.stats: dict[object, list[float]] = {}

    def dedup(self, b: Batch) -> tuple[list[str], list[str], list[float], list[int], list[int]]:
        """The columns of the rows not seen before; keys leave memory below the newest ts - horizon."""
        seen, order = self.seen, self.seen_order
        d_out: list[str] = []
        s_out: list[str] = []
        v_out: list[float] = []
        t_out: list[int] = []
        r_out: list[int] = []
        newest = self.newest_ts
        for d, s, v, t, r in zip(b.device_id, b.sensor, b.value, b.ts, b.received_at, strict=True):
            key = (d, s, t)
            if key in seen:
                continue
            seen[key] = None
            order.append((t, key))
            d_out.append(d)
            s_out.append(s)
            v_out.append(v)
            t_out.append(t)
            r_out.append(r)
            if t > newest:
                newest = t
        self.newest_ts = newest
        floor = newest - self.horizon
        while order and order[0][0] < floor:
            del seen[order.popleft()[1]]
        return d_out, s_out, v_out, t_out, r_out

    def windows(
        self, device_id: list[str], sensor: list[str], value: list[float], ts: list[int], received: list[int]
    ) -> list[tuple[Any, ...]]:
        """Fold the rows in, then close (compute and drop) every window the watermark passed."""
        groups, sizes, ahead = self.groups, self.sizes, self.ahead
        newest = self.newest
        for d, s, v, t, r in zip(device_id, sensor, value, ts, received, strict=True):
            for size in sizes:
                key = (size, t - t % size)
                g = groups.get(key)
                if g is None:
                    g = groups[key] = defaultdict(list)
                g[(d, s)].append(v)
                g[(ALL_DEVICES, s)].append(v)
            c = min(t, r + ahead)
            if c > newest:
                newest = c
        self.newest = newest
        wm = newest - self.ooo
        out: list[tuple[Any, ...]] = []
        for key in [k for k in groups if k[0] + k[1] <= wm]:
            size, start = key
            for (d, s), values in groups.pop(key).items():
                a = np.array(values)
                p50, p95, p99 = np.quantile(a, [0.5, 0.95, 0.99], method="lower")
                std = float(a.std(ddof=1)) if len(a) > 1 else None
                out.append((s, d, size, start, len(a), float(a.sum()), float(a.mean()), float(a.min()),
                            float(a.max()), std, float(p50), float(p95), float(p99)))  # fmt: skip
        return out

    def twin_rows(self, device_id: list[str], sensor: list[str], value: list[float], ts: list[int]) -> None:
        """Each device's last value per sensor (the newest event time wins)."""
        twins = self.twins
        for d, s, v, t in zip(device_id, sensor, value, ts, strict=True):
            twin = twins.get(d)
            if twin is None:
                twin = twins[d] = {}
            old = twin.get(s)
            if old is None or t >= old[1]:
                twin[s] = (v, t)

    def live_stats(self, device_id: list[str], sensor: list[str], value: list[float], ts: list[int]) -> None:
        """Welford count/mean/m2/min/max and the newest value, per sensor and per (device, sensor)."""
        stats = self.stats
        for d, s, v, t in zip(device_id, sensor, value, ts, strict=True):
            for key in (s, (d, s)):
                st = stats.get(key)
                if st is None:
                    st = stats[key] = [0, 0.0, 0.0, math.inf, -math.inf, math.nan, -math.inf]
                n = st[0] + 1
                delta = v - st[1]
                mean = st[1] + delta / n
                st[0], st[1], st[2] = n, mean, st[2] + delta * (v - mean)
                if v < st[3]:
                    st[3] = v
                if v > st[4]:
                    st[4] = v
                if t >= st[6]:
                    st[5], st[6] = v, t


def run_naive(fleet: Fleet, seconds: int, sample: frozenset[str]) -> tuple[Timings, dict[str, int], Windows]:
    """The baseline over the same stream."""
    naive = Naive(StreamSettings())
    t = Timings()
    dedup = t.timed("dedup", naive.dedup, len)
    windows_of = t.timed("windows", naive.windows, lambda d, *_: len(d))
    twins_of = t.timed("twins", naive.twin_rows, lambda d, *_: len(d))
    stats_of = t.timed("live stats", naive.live_stats, lambda d, *_: len(d))
    counts = {"input": 0, "fresh": 0, "windows": 0}
    windows: Windows = {}
    for batch, _now in stream(fleet, seconds):
        c0, w0 = time.process_time(), time.perf_counter()
        d, s, v, ts, r = dedup(batch)
        stats_of(d, s, v, ts)
        closed = windows_of(d, s, v, ts, r)
        twins_of(d, s, v, ts)
        t.wall["total"] += time.perf_counter() - w0
        t.cpu["total"] += time.process_time() - c0
        t.rows["total"] += len(batch)
        counts["input"] += len(batch)
        counts["fresh"] += len(d)
        counts["windows"] += len(closed)
        for w in closed:
            if w[1] == ALL_DEVICES or w[1] in sample:
                windows[w[:4]] = (w[4], w[5], w[10], w[11], w[12])
    return t, counts, windows


def compare(ours: Windows, theirs: Windows, alpha: float) -> tuple[int, int, int]:
    """Windows both closed; how many differ in count/sum, and in a quantile beyond ``alpha``."""
    both = ours.keys() & theirs.keys()
    counted = quantiles = 0
    for key in both:
        a, b = ours[key], theirs[key]
        if a[0] != b[0] or not math.isclose(a[1], b[1], rel_tol=1e-9):
            counted += 1
        if not all(abs(x - y) <= alpha * abs(y) * (1 + 1e-9) for x, y in zip(a[2:], b[2:], strict=True)):
            quantiles += 1
    return len(both), counted, quantiles


# -- memory --------------------------------------------------------------------------------


PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """Resident set size of this process now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE / 2**20


def traced_mb() -> float:
    """What tracemalloc sees allocated now."""
    return tracemalloc.get_traced_memory()[0] / 2**20


def deep_mb(root: object) -> float:
    """``sys.getsizeof`` summed over every object reachable from ``root`` (types, modules, functions aside).

    Agrees with tracemalloc within ~3% on these processors and costs no tracing while they run.
    """
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | ModuleType | FunctionType):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total / 2**20


def feed_twins(devices: int, sensors: int) -> TwinProcessor:
    """Two messages from each device (``sensors`` readings each) through a fresh ``TwinProcessor``."""
    twins = TwinProcessor(twin_settings(StreamSettings()))
    seq = 0
    for batch, now in stream(Fleet(devices, sensors, duplicates=0.0), 2):
        batch.seq = list(range(seq + 1, seq + 1 + len(batch)))
        seq += len(batch)
        twins.on_batch(batch, now)
    return twins


def twin_memory(devices: int) -> dict[str, Any]:
    """RSS delta of the resident twins, then (a second processor) what tracemalloc traces."""
    gc.collect()
    before = rss_mb()
    twins = feed_twins(devices, len(SENSORS))
    gc.collect()
    rss = rss_mb() - before
    resident, sensors = len(twins), sum(len(t.sensors) for t in twins.twins())
    del twins
    gc.collect()
    tracemalloc.start()
    base = traced_mb()
    twins = feed_twins(devices, len(SENSORS))
    gc.collect()
    traced = traced_mb() - base
    sites = tracemalloc.take_snapshot().statistics("lineno")[:6]
    tracemalloc.stop()
    del twins
    top = [
        [
            f"{Path(f.filename).name}:{f.lineno}",
            linecache.getline(f.filename, f.lineno).strip() or "(a dataclass __init__: a default_factory)",
            s.size / 2**20,
        ]
        for s in sites
        for f in [s.traceback[0]]
    ]
    return {"twins": resident, "sensors": sensors, "rss_mb": rss, "traced_mb": traced, "top": top}


def dedup_memory(devices: int, minutes: int, deep_every: int) -> dict[str, Any]:
    """Every simulated minute: readings fed, keys held, RSS growth; the deep size every few minutes."""
    began = time.perf_counter()
    gc.collect()
    before = rss_mb()
    dedup = Deduplicator(StreamSettings().dedup_horizon_us)
    deduplicate = deduplicator(dedup)
    rows: list[list[Any]] = []
    fed = 0
    minute = 1
    for batch, now in stream(Fleet(devices, 1), minutes * 60):
        deduplicate(batch)
        fed += len(batch)
        if now - T0 >= minute * 60 * S:
            deep = deep_mb(dedup) if minute % deep_every == 0 or minute in (1, minutes) else None
            rows.append([minute, fed, len(dedup), rss_mb() - before, deep])
            minute += 1
    return {"rows": rows, "seconds": time.perf_counter() - began, "duplicates": dedup.duplicates_total}


def window_memory(devices: int, minutes: int) -> dict[str, Any]:
    """The windows open after ``minutes`` of event time: RSS delta, then (a second run) tracemalloc."""
    out: dict[str, Any] = {"series": devices * 3}
    for how in ("rss_mb", "traced_mb"):
        gc.collect()
        if how == "traced_mb":
            tracemalloc.start()
        measure = traced_mb if how == "traced_mb" else rss_mb
        before = measure()
        windows = WindowProcessor(window_settings(StreamSettings()))
        seq = 0
        for batch, now in stream(Fleet(devices, 3, duplicates=0.0), minutes * 60):
            positions = list(range(seq + 1, seq + 1 + len(batch)))
            seq += len(batch)
            windows.on_batch(
                batch.device_id, batch.sensor, batch.value, batch.ts, batch.received_at, positions, now
            )
        del batch, positions
        gc.collect()
        out[how] = measure() - before
        tracemalloc.stop()
        out["open"] = len(windows.open_windows())
        del windows
    return out


PHASES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "twins": lambda a: twin_memory(a.twin_devices),
    "dedup": lambda a: dedup_memory(a.dedup_devices, a.dedup_minutes, a.deep_every),
    "windows": lambda a: window_memory(a.devices, a.window_minutes),
    "fleetstream": lambda a: throughput_passes("fleetstream", a),
    "naive": lambda a: throughput_passes("naive", a),
}


def in_child(phase: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run a part in a fresh interpreter (waited for; killed if interrupted) and read its JSON."""
    cmd = [
        sys.executable, __file__, "--phase", phase, "--devices", str(args.devices),
        "--twin-devices", str(args.twin_devices), "--dedup-devices", str(args.dedup_devices),
        "--dedup-minutes", str(args.dedup_minutes), "--window-minutes", str(args.window_minutes),
        "--deep-every", str(args.deep_every), "--seconds", str(args.seconds), "--passes", str(args.passes),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"phase {phase} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


# -- report ----------------------------------------------------------------------------------------

STAGES = ("dedup", "live stats", "windows", "twins")
LABELS = {
    "dedup": "dedup (`Engine._deduplicate`)",
    "live stats": "live stats (`LiveStats.add`)",
    "windows": "windows 10 s + 1 min (`WindowProcessor.on_batch`)",
    "twins": "twins (`TwinProcessor.on_batch`)",
}


def throughput_passes(implementation: str, args: argparse.Namespace) -> dict[str, Any]:
    """``--passes`` runs over the stream in this process: timings of each, counts and windows of the last."""
    run = run_fleetstream if implementation == "fleetstream" else run_naive
    sample = frozenset(f"dev-{i:06d}" for i in range(SAMPLE_DEVICES))
    passes = []
    for _ in range(args.passes):
        timings, counts, windows = run(Fleet(args.devices), args.seconds, sample)
        passes.append({"cpu": timings.cpu, "wall": timings.wall, "rows": timings.rows})
    return {"passes": passes, "counts": counts, "windows": [[*k, *v] for k, v in windows.items()]}


def rate_of(p: dict[str, dict[str, float]], stage: str, clock: str = "cpu") -> float:
    """Rows per second of a stage in one pass."""
    return p["rows"][stage] / p[clock][stage]


def throughput(args: argparse.Namespace) -> bool:
    fleet = Fleet(args.devices)
    print(
        f"\n## 1. Throughput: {args.devices:,} devices x {fleet.sensors} sensors, {args.seconds} s of "
        f"event time, ~{fleet.batch_rows:,}-row batches, {fleet.duplicates:.0%} re-sends; each "
        f"implementation in a fresh process, {args.passes} pass(es) over the stream",
        flush=True,
    )
    ours, theirs = in_child("fleetstream", args), in_child("naive", args)
    counts, ncounts = ours["counts"], theirs["counts"]
    # The last pass runs on a heap the earlier ones used and freed, as in a long-running server.
    last, nlast = ours["passes"][-1], theirs["passes"][-1]
    total = last["cpu"]["total"]
    rows = []
    for stage in STAGES:
        cpu = last["cpu"][stage]
        ratio = rate_of(last, stage) / rate_of(nlast, stage)
        rows.append([LABELS[stage], f"{last['rows'][stage]:,}", f"{rate_of(last, stage):,.0f}",
                     f"{cpu / counts['input'] * 1e6:.2f}", f"{cpu / total:.0%}",
                     f"{rate_of(nlast, stage):,.0f}", f"{ratio:.2f}×"])  # fmt: skip
    other = total - sum(last["cpu"][stage] for stage in STAGES)
    rows.append(["log positions, `StreamProcessors` glue", "", "", f"{other / counts['input'] * 1e6:.2f}",
                 f"{other / total:.0%}", "", ""])  # fmt: skip
    rate, naive_rate = rate_of(last, "total"), rate_of(nlast, "total")
    rows.append(["**whole pipeline**", f"{counts['input']:,}", f"**{rate:,.0f}**",
                 f"{total / counts['input'] * 1e6:.2f}", "100%", f"{naive_rate:,.0f}",
                 f"**{rate / naive_rate:.2f}×**"])  # fmt: skip
    heads = ["stage", "rows in", "fleetstream rows/CPU-s", "µs per input reading", "share",
             "naive rows/CPU-s", "fleetstream / naive"]  # fmt: skip
    print(f"\npass {args.passes} of {args.passes}:\n" + table(heads, rows))
    per_pass = [
        [f"{i + 1}" + (" (fresh heap)" if i == 0 else " (heap reused)"), f"{rate_of(p, 'total'):,.0f}",
         f"{rate_of(n, 'total'):,.0f}", f"{rate_of(p, 'total') / rate_of(n, 'total'):.2f}×",
         f"{rate_of(p, 'total', 'wall'):,.0f}", f"{rate_of(n, 'total', 'wall'):,.0f}"]
        for i, (p, n) in enumerate(zip(ours["passes"], theirs["passes"], strict=True))
    ]  # fmt: skip
    heads = ["pass", "fleetstream rows/CPU-s", "naive rows/CPU-s", "fleetstream / naive",
             "fleetstream rows/wall-s", "naive rows/wall-s"]  # fmt: skip
    print("\n" + table(heads, per_pass))
    windows = {tuple(w[:4]): tuple(w[4:]) for w in ours["windows"]}
    nwindows = {tuple(w[:4]): tuple(w[4:]) for w in theirs["windows"]}
    compared, counted, quantiles = compare(windows, nwindows, WindowSettings().relative_accuracy)
    agree = counted == 0 and quantiles == 0 and counts["windows"] == ncounts["windows"] > 0
    print(
        f"\ninput {counts['input']:,} readings, {counts['duplicates']:,} dropped as re-sends "
        f"(naive: {counts['input'] - ncounts['fresh']:,}); {counts['windows']:,} windows emitted "
        f"(naive: {ncounts['windows']:,}), {counts['late']} late readings, "
        f"{counts['events']:,} twin events, {counts['twins']:,} twins"
    )
    print(
        f"windows compared with the baseline's (every fleet window, device windows of {SAMPLE_DEVICES} "
        f"devices): {compared:,}; count or sum differing: {counted}; a quantile beyond 1%: {quantiles}"
        f" -> {'agree' if agree else 'DISAGREE'}"
    )
    met = min(rate_of(p, "total") for p in ours["passes"]) >= TARGET_RATE
    verdict = "met" if met else "MISSED"
    print(
        f"whole pipeline {rate:,.0f} readings/CPU-s in the last pass, "
        f"{rate_of(ours['passes'][0], 'total'):,.0f} in the first (target >= {TARGET_RATE:,}): {verdict}; "
        f"fleetstream / naive = {rate / naive_rate:.2f}"
    )
    return met and agree


def report_twins(args: argparse.Namespace) -> bool:
    print(f"\n## 2. Memory per resident twin: {args.twin_devices:,} devices x {len(SENSORS)} sensors, "
          "2 messages each, in `TwinProcessor`", flush=True)  # fmt: skip
    r = in_child("twins", args)
    rows = []
    for how, key in (("tracemalloc", "traced_mb"), ("RSS delta", "rss_mb")):
        per = r[key] * 2**20 / r["twins"]
        rows.append([how, f"{r['twins']:,}", f"{r['sensors']:,}", f"{r[key]:,.1f}", f"{per:,.0f}"])
    print("\n" + table(["measured by", "twins", "sensor values", "MB", "bytes per twin"], rows))
    print("\nlargest allocation sites (tracemalloc):")
    print(table(["line", "code", "MB"], [[where, f"`{code}`", f"{mb:,.1f}"] for where, code, mb in r["top"]]))
    per = r["traced_mb"] * 2**20 / r["twins"]
    met: bool = per <= TARGET_TWIN_BYTES
    print(
        f"{per:,.0f} bytes per twin by tracemalloc (target <= {TARGET_TWIN_BYTES:,}): "
        + ("met" if met else "MISSED")
    )
    return met


def report_dedup(args: argparse.Namespace) -> None:
    print(
        f"\n## 3. Dedup memory: {args.dedup_devices:,} devices, 1 reading/s each, {args.dedup_minutes} min "
        f"of event time, 5% re-sends, horizon {StreamSettings().dedup_horizon_us / S:g} s",
        flush=True,
    )
    r = in_child("dedup", args)
    rows = [
        [m, f"{fed:,}", f"{keys:,}", f"{rss:,.1f}", "" if deep is None else f"{deep:,.1f}",
         "" if deep is None else f"{deep * 2**20 / keys:,.0f}"]
        for m, fed, keys, rss, deep in r["rows"]
    ]  # fmt: skip
    heads = ["minute", "readings fed", "keys held", "RSS growth MB", "deep size MB", "bytes per key"]
    print("\n" + table(heads, rows))
    later = [row for row in r["rows"] if row[0] >= 2]
    if later:
        keys = [row[2] for row in later]
        rss = [row[3] for row in later]
        print(
            f"from minute 2 on: keys {min(keys):,}..{max(keys):,}, RSS growth {min(rss):,.1f}.."
            f"{max(rss):,.1f} MB; {r['duplicates']:,} re-sends dropped; took {r['seconds']:.0f} s"
        )


def report_windows(args: argparse.Namespace) -> None:
    print(
        f"\n## 4. Open windows: {args.devices:,} devices x 3 sensors after {args.window_minutes} min of "
        "event time, sizes 10 s and 1 min, in `WindowProcessor`",
        flush=True,
    )
    r = in_child("windows", args)
    rows = [
        [how, f"{r['series']:,}", f"{r['open']:,}", f"{r[key]:,.1f}", f"{r[key] * 2**20 / r['open']:,.0f}",
         f"{r[key] * 2**20 / r['series']:,.0f}"]
        for how, key in (("tracemalloc", "traced_mb"), ("RSS delta", "rss_mb"))
    ]  # fmt: skip
    print(
        "\n"
        + table(["measured by", "series", "open windows", "MB", "bytes per window", "bytes per series"], rows)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="smaller fleets and spans, ~30 s (not for the record)"
    )
    p.add_argument("--only", default="throughput,twins,dedup,windows", help="comma-separated parts to run")
    p.add_argument("--devices", type=int, help="throughput and windows fleet (default 10000; quick 2000)")
    p.add_argument("--seconds", type=int, help="event time of the throughput stream (default 150; quick 100)")
    p.add_argument("--passes", type=int, help="throughput passes per process (default 2; quick 1)")
    p.add_argument("--twin-devices", type=int, help="resident twins (default 100000; quick 20000)")
    p.add_argument("--dedup-devices", type=int, help="dedup fleet (default 10000; quick 2000)")
    p.add_argument("--dedup-minutes", type=int, help="dedup event time (default 30; quick 10)")
    p.add_argument("--window-minutes", type=int, help="event time before counting windows (default 5)")
    p.add_argument("--deep-every", type=int, default=5, help="deep-size the dedup memory every N minutes")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)  # one part, in a child
    args = p.parse_args(argv)
    defaults = {"devices": 10_000, "seconds": 150, "passes": 2, "twin_devices": 100_000,
                "dedup_devices": 10_000, "dedup_minutes": 30, "window_minutes": 5}  # fmt: skip
    quick = {"devices": 2_000, "seconds": 100, "passes": 1, "twin_devices": 20_000,
             "dedup_devices": 2_000, "dedup_minutes": 10}  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick.get(name, value) if args.quick else value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # As `fleetstream up` sets it (cli.py): fewer collections of the long-lived processor state.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return 0
    stop_on_sigterm()
    began = datetime.now(UTC)
    print(f"processors benchmark, {began:%Y-%m-%d %H:%M} UTC, fleetstream at {source_revision()}")
    print(f"machine: {machine()}, numpy {np.__version__}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    parts = set(args.only.split(","))
    ok = True
    if "throughput" in parts:
        ok &= throughput(args)
    if "twins" in parts:
        ok &= report_twins(args)
    if "dedup" in parts:
        report_dedup(args)
    if "windows" in parts:
        report_windows(args)
    print(f"\ntook {(datetime.now(UTC) - began).total_seconds():.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
