"""Warm latency of the aggregate queries over 10 million readings, against raw DuckDB.

What it measures: p50/p95 latency, over HTTP on one keep-alive connection, of
``POST /compute/metrics`` (count, min, max, average of one sensor over one hour) and of
``GET /api/v1/metrics`` for the same sensor and hour, served by ``fleetstream up`` on a DuckDB
file of ``--rows`` readings (default 10M: 1000 devices, 6 sensors, 10 days, in time order).

Baselines, measured in the same run on the same file: the same SQL the store runs, executed
in-process on a DuckDB connection (the floor: what DuckDB itself costs), and the store
adapter's ``query_metrics`` in-process (adds the reader thread pool, not HTTP). Target:
``/compute/metrics`` under 20 ms warm.

The file is generated once through the real store adapter (``DuckDBStore.write`` of a
``Batch`` of 100k readings per transaction, in time order, log positions filled as the engine
fills them) and cached under ``benchmarks/out/`` (``--regenerate`` to rebuild). The file holds no
checkpoint, so the first ``fleetstream up`` on it replays every reading through the stream
processors before it answers (benchmarks/replay.py: ~10k readings/s for this shape, one reading
per window); the readiness wait allows for that.

    .venv/bin/python benchmarks/query.py [--requests 100] [--rows 10000000] [--regenerate]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from _harness import OUT, machine, percentile, source_revision, start_fleetstream, stop_on_sigterm, table
from fleetstream.adapters.store.duckdb import DuckDBStore
from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.ports import MetricsQuery

TARGET_MS = 20.0
REPLAY_RATE_FLOOR = 2_000  # readings/s: the slowest replay of this shape to wait for
START = datetime(2025, 3, 1, tzinfo=UTC)
DAYS = 10
DEVICES = 1000
# (device kind, sensors it sends with unit and value range); devices cycle through the kinds.
KINDS: tuple[tuple[str, tuple[tuple[str, str, float, float], ...]], ...] = (
    ("Thermostat", (("temperature", "°C", 15.0, 30.0),)),
    ("Barometer", (("pressure", "hPa", 950.0, 1050.0),)),
    ("Hygrometer", (("humidity", "%", 20.0, 80.0),)),
    ("Heart Rate Meter", (("heart_rate", "bpm", 50.0, 130.0),)),
    ("Host Monitor", (("cpu_usage", "%", 0.0, 100.0), ("mem_usage", "%", 0.0, 100.0),
                      ("temperature", "°C", 30.0, 90.0))),
)  # fmt: skip
SENSOR = "temperature"
FILE_NAME = "fleetstream.duckdb"


def us(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


# -- data ----------------------------------------------------------------------------------------


def readings(first: int, n: int, rows: int, rnd: np.random.Generator) -> Batch:
    """Readings ``first .. first + n - 1`` of ``rows`` in time order, each its own message, as the
    engine hands them to ``DuckDBStore.write`` (log positions filled)."""
    i = np.arange(first, first + n, dtype=np.int64)
    device = i % DEVICES
    kind_of = device % len(KINDS)
    step_us = DAYS * 86_400_000_000 // rows  # readings are evenly spread over the days
    sensors = [
        KINDS[k][1][(j // DEVICES) % len(KINDS[k][1])]
        for k, j in zip(kind_of.tolist(), i.tolist(), strict=True)
    ]
    low = np.array([s[2] for s in sensors])
    high = np.array([s[3] for s in sensors])
    ts = (us(START) + i * step_us).tolist()
    return Batch(
        device_id=[f"dev-{d:04d}" for d in device.tolist()],
        ts=ts,
        sensor=[s[0] for s in sensors],
        value=np.round(low + rnd.random(n) * (high - low), 2).tolist(),
        unit=[s[1] for s in sensors],
        device_type=[KINDS[k][0] for k in kind_of.tolist()],
        msg_id=[None] * n,
        kind=["telemetry"] * n,
        msg=list(message_numbers(n)),
        received_at=list(ts),
        seq=(i + 1).tolist(),
        messages_count=n,
    )


async def generate(data: Path, rows: int, batch: int) -> None:
    """``rows`` readings in time order through ``DuckDBStore.write``, ``batch`` per transaction."""
    store = DuckDBStore(f"duckdb:///{data / FILE_NAME}")
    await store.start()
    rnd = np.random.default_rng(7)
    began = time.perf_counter()
    written = 0
    try:
        while written < rows:
            n = min(batch, rows - written)
            await store.write(readings(written, n, rows, rnd))
            written += n
            if written % 1_000_000 < batch or written == rows:
                rate = written / (time.perf_counter() - began)
                print(f"  {written:>11,} / {rows:,} readings  ({rate:,.0f}/s)", flush=True)
    finally:
        await store.close()


def ensure_data(args: argparse.Namespace) -> tuple[Path, str]:
    """The cached data directory (generated when missing, or asked to); returns it and a summary."""
    data = OUT / f"query-{args.rows}"
    done = data / "complete.json"
    if args.regenerate and data.exists():
        shutil.rmtree(data)
    if not done.exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        print(f"generating {args.rows:,} readings into {data / FILE_NAME} (through DuckDBStore.write) ...")
        began = time.perf_counter()
        asyncio.run(generate(data, args.rows, args.batch))
        took = time.perf_counter() - began
        done.write_text(
            json.dumps({"rows": args.rows, "seconds": round(took, 1), "how": "DuckDBStore.write"})
        )
    meta = json.loads(done.read_text())
    size = (data / FILE_NAME).stat().st_size / 2**20
    summary = (
        f"{meta['rows']:,} readings, {DEVICES} devices, {DAYS} days from {START:%Y-%m-%d}, "
        f"{size:,.0f} MiB; generated through {meta['how']} in {meta['seconds']} s"
    )
    return data, summary


# -- measuring -------------------------------------------------------------------------------------


def measure(fn: Callable[[], object], warmup: int, requests: int) -> list[float]:
    """Milliseconds of ``requests`` calls after ``warmup`` unmeasured ones, sorted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)


def sql_of(start: int, end: int) -> tuple[str, list[Any]]:
    """The query ``DuckDBStore.query_metrics`` runs for /compute/metrics (end inclusive)."""
    sql = (
        "SELECT sensor, count(value), min(value), max(value), avg(value) FROM readings "
        "WHERE ts >= make_timestamp(?) AND ts <= make_timestamp(?) AND sensor IN (?) GROUP BY sensor"
    )
    return sql, [start, end, SENSOR]


def in_process(data: Path, hour: datetime, args: argparse.Namespace) -> dict[str, tuple[list[float], Any]]:
    """Raw DuckDB and the store adapter, on the file (before the server opens it)."""
    start, end = us(hour), us(hour + timedelta(hours=1))
    sql, params = sql_of(start, end)
    con = duckdb.connect(str(data / FILE_NAME), read_only=True)
    try:
        raw = con.execute(sql, params).fetchall()
        raw_times = measure(lambda: con.execute(sql, params).fetchall(), args.warmup, args.requests)
    finally:
        con.close()

    async def adapter() -> tuple[list[float], Any]:
        store = DuckDBStore(f"duckdb:///{data / FILE_NAME}")
        await store.start()
        query = MetricsQuery(start, end, ("count", "min", "max", "avg"), (SENSOR,), end_inclusive=True)
        try:
            result = await store.query_metrics(query)
            for _ in range(args.warmup):
                await store.query_metrics(query)
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                await store.query_metrics(query)
                times.append((time.perf_counter() - t0) * 1000)
            return sorted(times), result
        finally:
            await store.close()

    return {"raw": (raw_times, raw), "adapter": asyncio.run(adapter())}


class Client:
    """One keep-alive HTTP/1.1 connection (http.client), raising on a non-200 answer."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: bytes | None = None) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} answered {resp.status}: {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


def over_http(data: Path, hour: datetime, args: argparse.Namespace) -> dict[str, tuple[list[float], Any]]:
    """The two endpoints on ``fleetstream up``, sequentially on one keep-alive connection."""
    text_from, text_to = f"{hour:%Y-%m-%d %H:%M:%S}", f"{hour + timedelta(hours=1):%Y-%m-%d %H:%M:%S}"
    compute = json.dumps({SENSOR: ["count", "min", "max", "average"], "from": text_from, "to": text_to})
    iso_from, iso_to = f"{hour:%Y-%m-%dT%H:%M:%SZ}", f"{hour + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}"
    metrics = f"/api/v1/metrics?sensor={SENSOR}&from={iso_from}&to={iso_to}&agg=count,min,max,avg"
    hours = [START + timedelta(hours=h) for h in range(DAYS * 24)]
    rnd = random.Random(3)

    def compute_any_hour() -> Any:
        h = rnd.choice(hours)
        body = {SENSOR: ["count", "min", "max", "average"], "from": f"{h:%Y-%m-%d %H:%M:%S}",
                "to": f"{h + timedelta(hours=1):%Y-%m-%d %H:%M:%S}"}  # fmt: skip
        return client.call("POST", "/compute/metrics", json.dumps(body).encode())

    log = OUT / "query-server.log"
    # The first start on the generated file replays it (no checkpoint yet); later ones restore.
    server = start_fleetstream(data, log, ready_timeout=120 + args.rows / REPLAY_RATE_FLOOR)
    client = Client(server.port)
    try:
        out: dict[str, tuple[list[float], Any]] = {}
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("compute", lambda: client.call("POST", "/compute/metrics", compute.encode())),
            ("metrics", lambda: client.call("GET", metrics)),
            ("compute_any_hour", compute_any_hour),
        ]
        for name, fn in cases:
            answer = fn()
            out[name] = (measure(fn, args.warmup, args.requests), answer)
        return out
    finally:
        client.close()
        server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000, help="readings in the file (default 10M)")
    p.add_argument("--batch", type=int, default=100_000, help="readings per store.write when generating")
    p.add_argument("--requests", type=int, default=100, help="measured requests per case (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured requests first (default 5)")
    p.add_argument("--regenerate", action="store_true", help="rebuild the cached DuckDB file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    began = datetime.now(UTC)
    print(f"query benchmark, {began:%Y-%m-%d %H:%M} UTC, fleetstream at {source_revision()}")
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    OUT.mkdir(exist_ok=True)
    data, summary = ensure_data(args)
    print(f"data: {summary}")
    hour = START + timedelta(days=DAYS // 2, hours=12)
    end = hour + timedelta(hours=1)
    print(f"query: {SENSOR}, count/min/max/average, {hour:%Y-%m-%d %H:%M} to {end:%H:%M} (inclusive); "
          f"{args.warmup} warm-up then {args.requests} measured requests each", flush=True)  # fmt: skip
    results = in_process(data, hour, args)
    results.update(over_http(data, hour, args))

    raw_p50 = percentile(results["raw"][0], 50)
    labels = {
        "raw": "DuckDB SQL in-process (baseline)",
        "adapter": "DuckDBStore.query_metrics in-process",
        "metrics": "GET /api/v1/metrics over HTTP",
        "compute": "POST /compute/metrics over HTTP",
        "compute_any_hour": "POST /compute/metrics, a random hour each",
    }
    rows = []
    for key, label in labels.items():
        times = results[key][0]
        p50 = percentile(times, 50)
        rows.append(
            [label, f"{p50:.2f}", f"{percentile(times, 95):.2f}", f"{times[-1]:.2f}", f"{p50 / raw_p50:.1f}×"]
        )
    print("\n" + table(["what", "p50 ms", "p95 ms", "max ms", "p50 / baseline"], rows))

    raw = results["raw"][1]
    compute = results["compute"][1]["result"][SENSOR]
    same = raw and raw[0][1] == compute["count"] and abs(raw[0][4] - compute["average"]) < 1e-9
    print(f"\nanswers agree (raw SQL vs /compute/metrics): {'yes' if same else 'NO'}; "
          f"/compute/metrics answered {json.dumps(compute)}")  # fmt: skip
    p50 = percentile(results["compute"][0], 50)
    met = p50 < TARGET_MS
    print(f"/compute/metrics p50 {p50:.2f} ms (target < {TARGET_MS:g} ms warm): {'met' if met else 'MISSED'}")
    print(f"took {(datetime.now(UTC) - began).total_seconds():.0f} s")
    return 0 if met and same else 1


if __name__ == "__main__":
    sys.exit(main())
