"""Warm latency of the aggregate queries on PostgreSQL beside DuckDB, same readings, same run.

What it measures: p50/p95 latency, over HTTP on one keep-alive connection, of
``POST /compute/metrics`` (count, min, max, average of one sensor over one hour) and
``GET /api/v1/metrics`` (the same), served by ``fleetstream up --store postgresql://...`` and by
``fleetstream up`` on a DuckDB file holding the same ``--rows`` readings (default 10M: 1000
devices, 6 sensors, 10 days, in time order, as ``benchmarks/query.py``); plus each store adapter's
``query_metrics`` in-process (no HTTP), and the plain SQL on PostgreSQL (the floor).

The data is generated once, in columns, and written through both real adapters
(``PostgresStore.write``: binary COPY; ``DuckDBStore.write``: Arrow), 100k readings per
transaction; the load rates are printed. Both are cached under ``benchmarks/out/query-pg-<rows>/``
(``--regenerate`` rebuilds). PostgreSQL is a throwaway cluster started for the run (the tests'
``tests/servers.py``: fsync off, which changes nothing for reads), or ``--postgres URL`` for your own.

    .venv/bin/python benchmarks/query_postgres.py [--rows 10000000] [--requests 100] [--regenerate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from _harness import (
    OUT,
    Server,
    free_port,
    machine,
    percentile,
    source_revision,
    start_fleetstream,
    stop_on_sigterm,
    table,
)
from fleetstream.adapters.store.duckdb import DuckDBStore
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.ports import MetricsQuery
from query import DAYS, DEVICES, FILE_NAME, KINDS, SENSOR, START, Client, measure, us

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.servers
from tests.servers import Postgres

AGGS = ("count", "min", "max", "avg")


def columns(first: int, n: int, rows: int, rnd: np.random.Generator) -> Batch:
    """Readings ``first .. first + n - 1`` of ``rows`` in time order, each its own message."""
    i = np.arange(first, first + n, dtype=np.int64)
    device = i % DEVICES
    step_us = DAYS * 86_400_000_000 // rows
    kind_of = device % len(KINDS)
    batch = Batch()
    batch.seq = (i + 1).tolist()
    batch.device_id = [f"dev-{d:04d}" for d in device.tolist()]
    batch.ts = (us(START) + i * step_us).tolist()
    sensors = [
        KINDS[k][1][(j // DEVICES) % len(KINDS[k][1])]
        for k, j in zip(kind_of.tolist(), i.tolist(), strict=True)
    ]
    batch.sensor = [s[0] for s in sensors]
    batch.unit = [s[1] for s in sensors]
    low = np.array([s[2] for s in sensors])
    high = np.array([s[3] for s in sensors])
    batch.value = np.round(low + rnd.random(n) * (high - low), 2).tolist()
    batch.device_type = [KINDS[k][0] for k in kind_of.tolist()]
    batch.msg_id = [None] * n
    batch.kind = ["telemetry"] * n
    batch.msg = list(message_numbers(n))
    batch.received_at = list(batch.ts)
    batch.messages_count = n
    return batch


async def generate(data: Path, url: str, rows: int, per_write: int) -> dict[str, float]:
    """The same readings into both stores; readings/s of each store's writes."""
    duck = DuckDBStore(f"duckdb:///{data / FILE_NAME}")
    pg = PostgresStore(url)
    await duck.start()
    await pg.start()
    rnd = np.random.default_rng(7)
    spent = {"duckdb": 0.0, "postgresql": 0.0}
    try:
        for first in range(0, rows, per_write):
            batch = columns(first, min(per_write, rows - first), rows, rnd)
            for name, store in (("duckdb", duck), ("postgresql", pg)):
                t0 = time.perf_counter()
                await store.write(batch)
                spent[name] += time.perf_counter() - t0
            done = first + len(batch)
            if done % 1_000_000 < per_write or done == rows:
                print(f"  {done:>11,} / {rows:,} readings", flush=True)
    finally:
        await duck.close()
        await pg.close()
    spent["vacuum"] = settle(url)
    return {
        "duckdb": rows / spent["duckdb"],
        "postgresql": rows / spent["postgresql"],
        "vacuum_s": spent["vacuum"],
    }


def settle(url: str) -> float:
    """What autovacuum and the checkpointer would do in time (statistics, visibility map, BRIN
    summaries, dirty pages written), done now so they do not run during the measurements."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("VACUUM ANALYZE")
        con.execute("CHECKPOINT")
    return time.perf_counter() - t0


def prime(name: str, data: Path, *extra: str) -> float:
    """Start ``fleetstream up`` once and stop it: its first start replays every stored reading
    through the processors (windows, twins) and checkpoints at stop, so measured starts are quick.
    Returns the seconds until ready (the replay)."""
    port = free_port()
    log = OUT / f"query-{name}-prime.log"
    cmd = [
        sys.executable, "-m", "fleetstream", "up", "--no-simulator", "--no-table",
        "--port", str(port), "--data", str(data), "--log-level", "info", *extra,
    ]  # fmt: skip
    began = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server("fleetstream", proc, port, log)
    try:
        server.wait_ready("/readyz", timeout=6 * 3600)
        took = time.perf_counter() - began
    finally:
        server.stop()
    return took


def ensure_data(args: argparse.Namespace, url: str) -> tuple[Path, str]:
    """The cached DuckDB file and PostgreSQL cluster (generated when missing, or asked to)."""
    data = OUT / f"query-pg-{args.rows}"
    done = data / "complete.json"
    if not done.exists():
        print(
            f"generating {args.rows:,} readings into DuckDB and PostgreSQL (through both store adapters) ..."
        )
        rates = asyncio.run(generate(data, url, args.rows, args.batch))
        print("replaying them through the processors once per store (first start) ...", flush=True)
        rates["duckdb_replay_s"] = prime("duckdb", data)
        rates["postgresql_replay_s"] = prime("postgresql", data, "--store", url)
        done.write_text(json.dumps({"rows": args.rows, **{k: round(v, 1) for k, v in rates.items()}}))
    meta = json.loads(done.read_text())
    size = (data / FILE_NAME).stat().st_size / 2**20
    with psycopg.connect(url) as con:
        row = con.execute("SELECT pg_total_relation_size('readings')").fetchone()
    pg_size = (row[0] if row else 0) / 2**20
    summary = (
        f"{meta['rows']:,} readings, {DEVICES} devices, {DAYS} days from {START:%Y-%m-%d}; "
        f"DuckDB {size:,.0f} MiB, "
        f"PostgreSQL readings {pg_size:,.0f} MiB with indexes; written at {meta['duckdb']:,.0f} readings/s "
        f"(DuckDBStore.write) and {meta['postgresql']:,.0f} readings/s (PostgresStore.write, binary COPY), "
        f"then VACUUM ANALYZE {meta['vacuum_s']} s; first start (replaying every reading through the "
        f"processors) {meta['duckdb_replay_s']} s on DuckDB, {meta['postgresql_replay_s']} s on PostgreSQL"
    )
    return data, summary


def in_process(
    url: str, data: Path, hour: datetime, args: argparse.Namespace
) -> dict[str, tuple[list[float], Any]]:
    """Plain SQL on PostgreSQL (the floor), and both adapters' ``query_metrics``."""
    start, end = us(hour), us(hour + timedelta(hours=1))
    sql = (
        "SELECT sensor, count(value), min(value), max(value), avg(value) FROM readings "
        "WHERE ts >= %s AND ts <= %s AND sensor = ANY(%s) GROUP BY sensor"
    )
    out: dict[str, tuple[list[float], Any]] = {}
    with psycopg.connect(url) as con:
        raw = con.execute(sql, [start, end, [SENSOR]]).fetchall()
        out["raw"] = (
            measure(lambda: con.execute(sql, [start, end, [SENSOR]]).fetchall(), args.warmup, args.requests),
            raw,
        )
        plan = con.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, [start, end, [SENSOR]]).fetchall()
    print("PostgreSQL plan:\n  " + "\n  ".join(r[0] for r in plan))

    async def adapter(store: Any) -> tuple[list[float], Any]:
        await store.start()
        query = MetricsQuery(start, end, AGGS, (SENSOR,), end_inclusive=True)
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

    out["pg_adapter"] = asyncio.run(adapter(PostgresStore(url)))
    out["duck_adapter"] = asyncio.run(adapter(DuckDBStore(f"duckdb:///{data / FILE_NAME}")))
    return out


def over_http(
    name: str, data: Path, hour: datetime, args: argparse.Namespace, *extra: str
) -> dict[str, tuple[list[float], Any]]:
    """Both endpoints on ``fleetstream up`` (with ``extra`` options), sequentially on one connection."""
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

    server = start_fleetstream(data, OUT / f"query-{name}-server.log", *extra)
    client = Client(server.port)
    try:
        out: dict[str, tuple[list[float], Any]] = {}
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("compute", lambda: client.call("POST", "/compute/metrics", compute.encode())),
            ("metrics", lambda: client.call("GET", metrics)),
            ("compute_any_hour", compute_any_hour),
        ]
        for case, fn in cases:
            answer = fn()
            out[f"{name}_{case}"] = (measure(fn, args.warmup, args.requests), answer)
        return out
    finally:
        client.close()
        server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000, help="readings in each store (default 10M)")
    p.add_argument("--batch", type=int, default=100_000, help="readings per store.write when generating")
    p.add_argument("--requests", type=int, default=100, help="measured requests per case (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured requests first (default 5)")
    p.add_argument(
        "--postgres", help="an existing, empty database (postgresql://...) instead of a throwaway cluster"
    )
    p.add_argument("--regenerate", action="store_true", help="rebuild the cached data")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    began = datetime.now(UTC)
    print(
        f"query benchmark, PostgreSQL beside DuckDB, {began:%Y-%m-%d %H:%M} UTC, "
        f"fleetstream at {source_revision()}"
    )
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    OUT.mkdir(exist_ok=True)
    data = OUT / f"query-pg-{args.rows}"
    if args.regenerate or not (data / "complete.json").exists():
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    server = None
    url = args.postgres
    try:
        if url is None:
            server = Postgres(free_port(), workdir=data / "postgres")
            server.workdir.mkdir(exist_ok=True)
            server.start()
            url = server.url()
        data, summary = ensure_data(args, url)
        print(f"VACUUM ANALYZE and CHECKPOINT before measuring: {settle(url):.1f} s", flush=True)
        with psycopg.connect(url) as con:
            row = con.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {row[0] if row else '?'} at {url}")
        print(f"data: {summary}")
        hour = START + timedelta(days=DAYS // 2, hours=12)
        end = hour + timedelta(hours=1)
        print(f"query: {SENSOR}, count/min/max/average, {hour:%Y-%m-%d %H:%M} to {end:%H:%M} (inclusive); "
              f"{args.warmup} warm-up then {args.requests} measured requests each", flush=True)  # fmt: skip
        results = in_process(url, data, hour, args)
        results.update(over_http("duckdb", data, hour, args))
        results.update(over_http("postgresql", data, hour, args, "--store", url))
    finally:
        if server is not None:
            server.stop()

    labels = {
        "raw": "PostgreSQL SQL in-process (floor)",
        "pg_adapter": "PostgresStore.query_metrics in-process",
        "duck_adapter": "DuckDBStore.query_metrics in-process",
    }
    for case, label in (
        ("metrics", "GET /api/v1/metrics"),
        ("compute", "POST /compute/metrics"),
        ("compute_any_hour", "POST /compute/metrics, a random hour each"),
    ):
        for store in ("duckdb", "postgresql"):
            labels[f"{store}_{case}"] = f"{label} on {store}"
    rows = []
    for key, label in labels.items():
        times = results[key][0]
        rows.append(
            [label, f"{percentile(times, 50):.2f}", f"{percentile(times, 95):.2f}", f"{times[-1]:.2f}"]
        )
    print("\n" + table(["what", "p50 ms", "p95 ms", "max ms"], rows))

    duck = results["duckdb_compute"][1]["result"][SENSOR]
    pg = results["postgresql_compute"][1]["result"][SENSOR]
    same = duck["count"] == pg["count"] and duck["min"] == pg["min"] and duck["max"] == pg["max"]
    same = same and abs(duck["average"] - pg["average"]) <= 1e-9 * abs(duck["average"])
    print(
        f"\nanswers agree (DuckDB vs PostgreSQL /compute/metrics): {'yes' if same else 'NO'}; "
        f"{json.dumps(pg)}"
    )
    print(f"took {(datetime.now(UTC) - began).total_seconds():.0f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
