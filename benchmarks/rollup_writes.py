"""What keeping the per-minute and per-hour rollups costs PostgreSQL writers: readings/s through
``PostgresStore.write`` (binary COPY + the rollups' upsert, one transaction per batch) vs the same
writes with the rollup step skipped (the store as it was before schema 4), one run.

Data: the simulator's shape, ``--devices`` devices (default 1000) sending one message of 3 readings
(temperature, pressure, humidity) every second, event times jittered by up to ±2 s, in batches of
``--batch`` readings (default 3000: one group commit of the whole fleet's second), ``--rows``
readings in all (default 600k: 200 s of the fleet). The two variants write into two fresh
databases of one throwaway server (tests/servers.py: fsync off, so the figures are the CPU and
I/O of the statements, not of the disk's flush), batch by batch alternately, the order flipped
each batch. Also printed: the time in the rollups' two parts (numpy aggregation of the batch per
minute and per hour, the one statement upserting both), and a check that both hold every reading.

    .venv/bin/python benchmarks/rollup_writes.py [--rows 600000] [--batch 3000] [--devices 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from _harness import machine, source_revision, stop_on_sigterm, table
from fleetstream.adapters.store import postgres, postgres_rollups
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.domain.batch import Batch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.servers
from tests.servers import Postgres

SENSORS = (("temperature", 21.0, 3.0), ("pressure", 1013.0, 8.0), ("humidity", 45.0, 10.0))
T0 = 1_740_787_200_000_000  # 2025-03-01 UTC, microseconds


def batches(rows: int, size: int, devices: int) -> list[Batch]:
    """``rows`` readings in batches of ``size`` (whole messages of 3), log positions filled."""
    rnd = np.random.default_rng(5)
    k = len(SENSORS)
    out = []
    names = [f"dev-{d:05d}" for d in range(devices)]
    for first in range(0, rows, size):
        row = np.arange(first, min(first + size, rows))
        msg = row // k
        ts = T0 + (msg // devices) * 1_000_000 + rnd.integers(-2_000_000, 2_000_001, len(row))
        which = row % k
        value = np.round(np.array([s[1] for s in SENSORS])[which] + rnd.standard_normal(len(row)), 2)
        n = len(row)
        out.append(
            Batch(
                device_id=[names[d] for d in (msg % devices).tolist()],
                ts=ts.tolist(),
                sensor=[SENSORS[w][0] for w in which.tolist()],
                value=value.tolist(),
                unit=[None] * n,
                device_type=["Weather Station"] * n,
                msg_id=[None] * n,
                kind=["telemetry"] * n,
                msg=msg.tolist(),
                received_at=ts.tolist(),
                seq=(row + 1).tolist(),
                messages_count=len(set(msg.tolist())),
            )
        )
    return out


async def measure(url_a: str, url_b: str, work: list[Batch]) -> dict[str, Any]:
    with_rollups, without = PostgresStore(url_a), PostgresStore(url_b)
    await with_rollups.start()
    await without.start()
    real_add = postgres_rollups.add_batch
    spent = {"with rollups": 0.0, "without": 0.0, "aggregate": 0.0, "upsert": 0.0}

    async def timed_add(con: Any, sensor: list[str], ts: Any, value: list[float]) -> None:
        t0 = time.perf_counter()
        parts = postgres_rollups.parts(sensor, ts, value)
        t1 = time.perf_counter()
        await con.execute(postgres_rollups.UPSERT, parts)
        spent["aggregate"] += t1 - t0
        spent["upsert"] += time.perf_counter() - t1

    async def skipped(con: Any, sensor: list[str], ts: Any, value: list[float]) -> None:
        return None

    async def write(store: PostgresStore, step: Callable[..., Awaitable[None]], b: Batch) -> float:
        postgres.rollups.add_batch = step  # type: ignore[assignment]
        t0 = time.perf_counter()
        await store.write(b)
        return time.perf_counter() - t0

    try:
        for i, b in enumerate(work):
            order = [("with rollups", with_rollups, timed_add), ("without", without, skipped)]
            for name, store, step in order if i % 2 else order[::-1]:
                spent[name] += await write(store, step, b)
        postgres.rollups.add_batch = real_add
        held = await with_rollups.execute(
            """SELECT sum(n)::int8, count(*) FROM readings_1m
               UNION ALL SELECT sum(n)::int8, count(*) FROM readings_1h"""
        )
        stored = await with_rollups.execute("SELECT count(*) FROM readings")
    finally:
        postgres.rollups.add_batch = real_add
        await with_rollups.close()
        await without.close()
    return {
        **spent,
        "rolled_up": [h[0] for h in held],
        "rollup_rows": [h[1] for h in held],
        "stored": stored[0][0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=600_000)
    p.add_argument("--batch", type=int, default=3000)
    p.add_argument("--devices", type=int, default=1000)
    args = p.parse_args(argv)
    args.batch += -args.batch % 3
    stop_on_sigterm()
    print(f"rollup write cost, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, fleetstream at {source_revision()}")
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    work = batches(args.rows, args.batch, args.devices)
    server = Postgres.launch()
    try:
        got = asyncio.run(measure(server.create_database(), server.create_database(), work))
    finally:
        server.close()
    rows = args.rows
    rate = {k: rows / got[k] for k in ("with rollups", "without")}
    print(
        "\n"
        + table(
            ["PostgresStore.write", "batches", "readings", "seconds", "readings/s"],
            [
                [name, len(work), f"{rows:,}", f"{got[name]:.2f}", f"{rate[name]:,.0f}"]
                for name in ("without", "with rollups")
            ],
        )
    )
    per_batch = {k: 1000 * got[k] / len(work) for k in ("aggregate", "upsert")}
    print(
        f"\nwith rollups / without: {rate['with rollups'] / rate['without']:.2f} of the write rate; "
        f"rollup per batch of {args.batch:,}: numpy aggregation {per_batch['aggregate']:.2f} ms, "
        f"upsert {per_batch['upsert']:.2f} ms"
    )
    ok = got["rolled_up"] == [rows, rows] and got["stored"] == rows
    minutes, hours = got["rollup_rows"]
    print(f"rollups hold every reading: {'yes' if ok else 'NO'} ({got['rolled_up']} in {minutes:,} "
          f"minute and {hours:,} hour rows; {got['stored']:,} readings)")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
