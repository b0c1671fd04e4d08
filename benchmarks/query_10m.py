"""Query latency over 10 million readings: PostgreSQL (cluster ``api``, from its per-minute rollups
and from raw rows) beside DuckDB (``up``), one run.

What it measures: p50/p95/p99 latency, over HTTP on one keep-alive connection, of
``GET /api/v1/metrics`` and ``POST /compute/metrics`` (count, min, max, average of one sensor)
over a 1-hour range, the full range and a random range each request (the same random ranges on
both stores), and ``GET /api/v1/metrics`` of one device over 1 hour (device filters read raw rows),
``--requests`` (default 200) each after 5 unmeasured ones. PostgreSQL is served by two
``fleetstream api --bus kafka://... --store postgresql://...`` (cluster mode: queries read the
store, no engine, no replay; a Tansu broker is started for their bus), one answering metric queries
from the rollups (``readings_1h`` for whole hours, ``readings_1m`` for the whole minutes around
them, raw rows for the partial minutes at the edges), one from raw rows only (``?rollups=off`` in
the store URL: the store before schema 4).
The rollups are rebuilt from the readings before measuring, timed: what a database from before schema
4 pays once at its first start. DuckDB is served by ``fleetstream
up``, whose first start on a generated file replays every reading through the processors (windows,
twins) and stores a checkpoint: that replay runs once when the data is generated, is timed and
printed, and the measured start restores the checkpoint instead.

Data: the simulator's shape, ``--devices`` devices (default 1000) sending one message of 3 readings
(temperature, pressure, humidity) every 4 s, in time order, ``--rows`` readings (10M: 3.7 hours).
Generated in numpy columns and loaded in bulk (DuckDB: an Arrow table inserted into the schema
``DuckDBStore`` creates; PostgreSQL: ``COPY ... FROM STDIN (FORMAT CSV)`` into the schema
``PostgresStore`` creates, BRIN on ``ts``), cached under ``benchmarks/out/query-10m-<rows>/``
(``--regenerate`` rebuilds). PostgreSQL is a throwaway cluster (``tests/servers.py``) with, stated
in the output: shared_buffers 512MB, work_mem 64MB, 2 parallel workers per query, random_page_cost
1.1 (SSD), VACUUM ANALYZE and CHECKPOINT before measuring. After the adapter's own indexes, a
covering btree on ``(sensor, ts) INCLUDE (value)`` is built and ``/api/v1/metrics`` measured again
from raw rows. Every PostgreSQL answer (rollups and raw) is checked against DuckDB's (1 hour, full
range, one device: counts exactly, floats within 1e-9 relative).

    .venv/bin/python benchmarks/query_10m.py [--rows 10000000] [--requests 200] [--regenerate]
"""

from __future__ import annotations

import argparse
import asyncio
import io
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
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from _harness import (
    OUT,
    free_port,
    machine,
    percentile,
    source_revision,
    start,
    start_fleetstream,
    stop_on_sigterm,
    table,
)
from fleetstream.adapters.store.duckdb import _READINGS_SCHEMA, DuckDBStore
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.adapters.store.postgres_rollups import BACKFILL, DDL
from query import Client, measure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.servers
from tests.servers import Postgres, Tansu

START = datetime(2025, 3, 1, tzinfo=UTC)
INTERVAL_US = 4_000_000
SENSORS = (("temperature", "°C", 21.0, 3.0), ("pressure", "hPa", 1013.0, 8.0), ("humidity", "%", 45.0, 10.0))
SENSOR = "temperature"
FILE_NAME = "fleetstream.duckdb"
CHUNK = 1_000_000  # readings per bulk load
TUNING = {
    "shared_buffers": "512MB",
    "work_mem": "64MB",
    "max_parallel_workers_per_gather": "2",
    "random_page_cost": "1.1",
    "effective_cache_size": "4GB",
}
COVERING = "CREATE INDEX readings_sensor_ts_cover ON readings (sensor, ts) INCLUDE (value)"


def us(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000


def chunk(first: int, n: int, devices: int, rnd: np.random.Generator) -> pa.Table:
    """Readings ``first .. first + n - 1`` (``first`` and ``n`` whole messages of 3) in time order."""
    k = len(SENSORS)
    row = np.arange(first, first + n, dtype=np.int64)
    msg = row // k
    device = msg % devices
    # Each device sends once per interval, at its own offset within it: time order = log order.
    ts = us(START) + (msg // devices) * INTERVAL_US + device * (INTERVAL_US // devices)
    which = row % k
    mean = np.array([s[2] for s in SENSORS])[which]
    sd = np.array([s[3] for s in SENSORS])[which]
    names = pa.array([f"dev-{d:05d}" for d in range(devices)])
    times = pa.array(ts, pa.timestamp("us"))
    return pa.Table.from_arrays(
        [
            pa.array(row + 1),  # every row its own log position, as the engine numbers them
            names.take(pa.array(device)),
            times,
            pa.array([s[0] for s in SENSORS]).take(pa.array(which)),
            pa.array(np.round(mean + sd * rnd.standard_normal(n), 2)),
            pa.array([s[1] for s in SENSORS]).take(pa.array(which)),
            pa.array(["Weather Station"] * n),
            pa.nulls(n, pa.string()),
            times,
            pa.array(["telemetry"] * n),
            pa.array(msg * k + 1),  # the log position of the message's first row
        ],
        schema=_READINGS_SCHEMA,
    )


def as_postgres_csv(t: pa.Table) -> bytes:
    """The chunk as CSV for COPY into PostgreSQL's readings (times as integer microseconds)."""
    cols = {name: t.column(name) for name in t.column_names}
    for name in ("ts", "received_at"):
        cols[name] = cols[name].cast(pa.int64())
    out = io.BytesIO()
    pacsv.write_csv(pa.table(cols), out, pacsv.WriteOptions(include_header=False))
    return out.getvalue()


def generate(data: Path, url: str, rows: int, devices: int) -> dict[str, float]:
    """The same readings into both stores (schemas as the adapters create them); seconds of each."""

    async def schemas() -> None:
        for store in (DuckDBStore(f"duckdb:///{data / FILE_NAME}"), PostgresStore(url)):
            await store.start()
            await store.close()

    asyncio.run(schemas())
    rnd = np.random.default_rng(7)
    spent = {"duckdb_load_s": 0.0, "postgresql_load_s": 0.0}
    duck = duckdb.connect(str(data / FILE_NAME))
    columns = ", ".join(_READINGS_SCHEMA.names)
    try:
        with psycopg.connect(url, autocommit=True) as pg:
            for first in range(0, rows, CHUNK):
                t = chunk(first, min(CHUNK, rows - first), devices, rnd)
                t0 = time.perf_counter()
                duck.register("incoming", t)
                duck.execute("INSERT INTO readings SELECT * FROM incoming")
                duck.unregister("incoming")
                t1 = time.perf_counter()
                with pg.cursor().copy(f"COPY readings ({columns}) FROM STDIN (FORMAT CSV)") as copy:
                    copy.write(as_postgres_csv(t))
                spent["duckdb_load_s"] += t1 - t0
                spent["postgresql_load_s"] += time.perf_counter() - t1
                print(f"  {first + len(t):>11,} / {rows:,} readings", flush=True)
    finally:
        duck.execute("CHECKPOINT")
        duck.close()
    return spent


def rebuild_rollups(url: str) -> tuple[float, list[int]]:
    """The rollups built anew from every reading (the bulk load bypasses the store's writes,
    which keep them): seconds and rows of each."""
    rows = []
    with psycopg.connect(url, autocommit=True) as con:
        t0 = time.perf_counter()
        with con.transaction():
            con.execute(DDL)  # data cached before a rollup level existed
            for table, statement in BACKFILL.items():
                con.execute(f"TRUNCATE {table}")
                rows.append(con.execute(statement).rowcount)
        took = time.perf_counter() - t0
        for table in BACKFILL:
            con.execute(f"VACUUM ANALYZE {table}")
    return took, rows


def copy_cost(url: str, rows: int, devices: int) -> float:
    """Seconds to COPY the next 1M readings in a transaction that is then rolled back (the data
    stays as generated): what an extra index costs writers."""
    t = chunk(rows, CHUNK - CHUNK % len(SENSORS), devices, np.random.default_rng(8))
    body = as_postgres_csv(t)
    with psycopg.connect(url) as con:
        t0 = time.perf_counter()
        with con.cursor().copy(
            f"COPY readings ({', '.join(t.column_names)}) FROM STDIN (FORMAT CSV)"
        ) as copy:
            copy.write(body)
        took = time.perf_counter() - t0
        con.rollback()
    return took


def replay_once(data: Path) -> float:
    """Start ``fleetstream up`` on the generated file once and stop it: it replays every reading
    through the processors, then stores a checkpoint at stop. Returns the seconds until ready."""
    began = time.perf_counter()
    server = start_fleetstream(data, OUT / "query-10m-duckdb-replay.log", ready_timeout=3 * 3600)
    took = time.perf_counter() - began
    server.stop()
    return took


def tune(server: Postgres, url: str) -> None:
    """The server settings in TUNING (shared_buffers needs a restart)."""
    with psycopg.connect(url, autocommit=True) as con:
        for name, value in TUNING.items():
            con.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    server.stop()
    server.start()


def settle(url: str) -> float:
    """VACUUM ANALYZE (statistics, visibility map, BRIN summaries) and CHECKPOINT, timed."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("VACUUM ANALYZE readings")
        con.execute("CHECKPOINT")
    return time.perf_counter() - t0


def rollup_size(url: str) -> str:
    with psycopg.connect(url) as con:
        size = (
            con.execute(
                "SELECT pg_total_relation_size('readings_1m') + pg_total_relation_size('readings_1h')"
            ).fetchone()
            or (0,)
        )[0]
    return f"{size / 2**20:,.1f} MiB with their primary keys"


def sizes(url: str, data: Path) -> str:
    with psycopg.connect(url) as con:
        heap, total = con.execute(
            "SELECT pg_relation_size('readings'), pg_total_relation_size('readings')"
        ).fetchone() or (0, 0)
        idx = con.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = 'readings'::regclass ORDER BY 1"
        ).fetchall()
    indexes = ", ".join(f"{name} {size / 2**20:,.1f}" for name, size in idx)
    return (
        f"DuckDB file {(data / FILE_NAME).stat().st_size / 2**20:,.0f} MiB; PostgreSQL readings "
        f"{heap / 2**20:,.0f} MiB table, {total / 2**20:,.0f} MiB with indexes ({indexes} MiB)"
    )


def plans(url: str, ranges: dict[str, tuple[int, int]]) -> None:
    sql = (
        "SELECT sensor, count(value), min(value), max(value), avg(value) FROM readings "
        "WHERE ts >= %s AND ts <= %s AND sensor = ANY(%s) GROUP BY sensor"
    )
    with psycopg.connect(url) as con:
        for name, (lo, hi) in ranges.items():
            rows = con.execute("EXPLAIN (ANALYZE, COSTS OFF) " + sql, [lo, hi, [SENSOR]]).fetchall()
            shown = [r[0].strip() for r in rows if "Scan" in r[0] or "Execution" in r[0] or "Workers" in r[0]]
            print(f"  PostgreSQL plan, {name}: " + " | ".join(shown))


def cases(client: Client, span: tuple[datetime, datetime], only: str = "") -> dict[str, Callable[[], Any]]:
    """name → one request; the random ranges are the same sequence on every server (seeded)."""
    first, last = span
    hour = first + (last - first) / 2
    fixed = {"1 hour": (hour, hour + timedelta(hours=1)), "full range": (first, last)}
    rnd = random.Random(3)
    seconds = int((last - first).total_seconds())

    def random_range() -> tuple[datetime, datetime]:
        a, b = sorted(rnd.sample(range(seconds + 1), 2))
        return first + timedelta(seconds=a), first + timedelta(seconds=b)

    def metrics(r: Callable[[], tuple[datetime, datetime]], device: str = "") -> Callable[[], Any]:
        def call() -> Any:
            lo, hi = r()
            return client.call("GET", f"/api/v1/metrics?sensor={SENSOR}&from={lo:%Y-%m-%dT%H:%M:%SZ}"
                               f"&to={hi:%Y-%m-%dT%H:%M:%SZ}&agg=count,min,max,avg{device}")  # fmt: skip

        return call

    def compute(r: Callable[[], tuple[datetime, datetime]]) -> Callable[[], Any]:
        def call() -> Any:
            lo, hi = r()
            body = {SENSOR: ["count", "min", "max", "average"], "from": f"{lo:%Y-%m-%d %H:%M:%S}",
                    "to": f"{hi:%Y-%m-%d %H:%M:%S}"}  # fmt: skip
            return client.call("POST", "/compute/metrics", json.dumps(body).encode())

        return call

    ranges: dict[str, Callable[[], tuple[datetime, datetime]]] = {
        name: (lambda v=v: v) for name, v in fixed.items()
    }
    ranges["random range"] = random_range
    out: dict[str, Callable[[], Any]] = {}
    for endpoint, make in (("GET /api/v1/metrics", metrics), ("POST /compute/metrics", compute)):
        if only and not endpoint.startswith(only):
            continue
        for name, r in ranges.items():
            out[f"{endpoint}, {name}"] = make(r)
        if endpoint.startswith("GET"):
            out[f"{endpoint}, 1 hour, one device"] = metrics(ranges["1 hour"], "&device_id=dev-00042")
    return out


def run_cases(
    label: str, client: Client, span: tuple[datetime, datetime], args: argparse.Namespace, only: str = ""
) -> dict[str, tuple[list[float], Any]]:
    out = {}
    for name, fn in cases(client, span, only).items():
        answer = fn()
        out[f"{name} | {label}"] = (measure(fn, args.warmup, args.requests), answer)
        times = out[f"{name} | {label}"][0]
        print(f"  {name} on {label}: p50 {percentile(times, 50):.2f} ms", flush=True)
    return out


def close(a: Any, b: Any) -> bool:
    """Equal answers, floats within 1e-9 relative (the two engines sum in different orders)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)
    return bool(a == b)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000, help="readings in each store (default 10M)")
    p.add_argument("--devices", type=int, default=1000, help="devices (3 sensors each, one message per 4 s)")
    p.add_argument("--requests", type=int, default=200, help="measured requests per case (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="unmeasured requests first (default 5)")
    p.add_argument("--regenerate", action="store_true", help="rebuild the cached data")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.rows += -args.rows % len(SENSORS)  # whole messages of 3 readings
    stop_on_sigterm()
    began = datetime.now(UTC)
    print(f"query latency over {args.rows:,} readings, PostgreSQL beside DuckDB, {began:%Y-%m-%d %H:%M} UTC, "
          f"fleetstream at {source_revision()}")  # fmt: skip
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    data = OUT / f"query-10m-{args.rows}-{args.devices}"
    done = data / "complete.json"
    if args.regenerate or not done.exists():
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    pg = Postgres(free_port(), workdir=data / "postgres")
    pg.workdir.mkdir(exist_ok=True)
    broker = api = duck = None
    results: dict[str, tuple[list[float], Any]] = {}
    try:
        pg.start()
        url = pg.url()
        if not done.exists():
            print(f"generating {args.rows:,} readings into DuckDB and PostgreSQL ...", flush=True)
            meta: dict[str, float] = generate(data, url, args.rows, args.devices)
            print("DuckDB's first start: replaying every reading through the processors ...", flush=True)
            meta["duckdb_replay_s"] = replay_once(data)
            done.write_text(json.dumps({k: round(v, 1) for k, v in meta.items()}))
        meta = json.loads(done.read_text())
        tune(pg, url)
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("DROP INDEX IF EXISTS readings_sensor_ts_cover")  # left by an interrupted run
            version = (con.execute("SHOW server_version").fetchone() or ["?"])[0]
        vacuum_s = settle(url)
        last_ts = START + timedelta(
            microseconds=(args.rows // len(SENSORS) - 1) // args.devices * INTERVAL_US
        )
        span = (START, last_ts + timedelta(seconds=4))
        print(
            f"data: {args.rows:,} readings, {args.devices:,} devices × {len(SENSORS)} sensors every "
            f"{INTERVAL_US // 1_000_000} s, {span[0]:%Y-%m-%d %H:%M} to {span[1]:%H:%M:%S} UTC; bulk load "
            f"{meta['duckdb_load_s']} s into DuckDB (Arrow), {meta['postgresql_load_s']} s into PostgreSQL "
            f"(COPY, BRIN and btree(seq) maintained); DuckDB's one-off first-start replay "
            f"{meta['duckdb_replay_s']} s ({args.rows / meta['duckdb_replay_s']:,.0f} readings/s)"
        )
        print(f"PostgreSQL {version}: {', '.join(f'{k}={v}' for k, v in TUNING.items())}; "
              f"VACUUM ANALYZE + CHECKPOINT {vacuum_s:.1f} s", flush=True)  # fmt: skip
        print(f"sizes: {sizes(url, data)}", flush=True)
        rollup_s, (minutes, hours) = rebuild_rollups(url)
        print(f"rollups (readings_1m, readings_1h) rebuilt from the {args.rows:,} readings in "
              f"{rollup_s:.1f} s: {minutes:,} and {hours:,} rows, {rollup_size(url)}",
              flush=True)  # fmt: skip
        hour = span[0] + (span[1] - span[0]) / 2
        window = {
            "1 hour": (us(hour), us(hour + timedelta(hours=1))),
            "full range": (us(span[0]), us(span[1])),
        }
        plans(url, window)

        broker = Tansu.launch()
        port = free_port()
        cmd = [sys.executable, "-m", "fleetstream", "api", "--bus", f"kafka://{broker.bootstrap}",
               "--store", url, "--port", str(port), "--log-level", "warning"]  # fmt: skip
        api = start("fleetstream api", cmd, port, OUT / "query-10m-api.log", "/readyz")
        client = Client(api.port)
        results.update(run_cases("PostgreSQL rollups", client, span, args))
        client.close()
        api.stop()
        port = free_port()
        cmd[cmd.index(url)] = url + "?rollups=off"
        cmd[cmd.index("--port") + 1] = str(port)
        api = start("fleetstream api", cmd, port, OUT / "query-10m-api-raw.log", "/readyz")
        client = Client(api.port)
        results.update(run_cases("PostgreSQL raw (BRIN)", client, span, args))
        duck = start_fleetstream(data, OUT / "query-10m-duckdb.log", ready_timeout=600)
        duck_client = Client(duck.port)
        results.update(run_cases("DuckDB", duck_client, span, args))
        duck_client.close()
        duck.stop()
        duck = None

        client.close()  # idle through the index build, the server would close it
        before = copy_cost(url, args.rows, args.devices)
        t0 = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(COVERING)
        built = time.perf_counter() - t0
        print(f"covering index ({COVERING}) built in {built:.1f} s, then VACUUM ANALYZE "
              f"{settle(url):.1f} s; sizes: {sizes(url, data)}", flush=True)  # fmt: skip
        after = copy_cost(url, args.rows, args.devices)
        print(f"COPY of 1M more readings (rolled back): {before:.2f} s with the adapter's indexes, "
              f"{after:.2f} s with the covering btree too", flush=True)  # fmt: skip
        plans(url, window)
        client = Client(api.port)
        results.update(run_cases("PostgreSQL raw (+ covering btree)", client, span, args, only="GET"))
        client.close()
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("DROP INDEX readings_sensor_ts_cover")
        settle(url)  # the rolled-back COPYs leave dead rows: gone before the next run
    finally:
        for proc in (duck, api, broker, pg):
            if proc is not None:
                proc.stop()

    rows = []
    for key, (times, _) in sorted(results.items(), key=lambda kv: kv[0].split(" | ")[0]):
        what, store = key.split(" | ")
        rows.append([what, store, len(times), *(f"{percentile(times, q):.2f}" for q in (50, 95, 99))])
    print("\n" + table(["query", "store", "requests", "p50 ms", "p95 ms", "p99 ms"], rows))
    agree = True
    for key, (_, answer) in results.items():
        what, store = key.split(" | ")
        if store == "DuckDB" or "random" in what:
            continue
        theirs = results[f"{what} | DuckDB"][1]
        a, b = (x.get("result", x) for x in (answer, theirs))
        same = close(a, b)
        if not same:
            print(f"answers differ, {what}: {store} {a} vs DuckDB {b}")
        agree = agree and same
    verdict = "yes" if agree else "NO"
    print(f"\nanswers agree (PostgreSQL vs DuckDB, 1 hour, full range, one device): {verdict}")
    print(f"took {(datetime.now(UTC) - began).total_seconds():.0f} s")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
