"""Replay of the log on start: readings per second of ``Engine._recover`` vs the processors alone.

A store that holds readings but no checkpoint (filled by a benchmark, or an old store) is
replayed through the stream processors before ``fleetstream up`` takes traffic. This measures
that replay on a fresh DuckDB file of ``--rows`` readings, in two shapes:

- ``query``: the rows ``benchmarks/query_postgres.py`` writes (1000 devices of 5 kinds, one
  reading per message, in time order over 10 days);
- ``simulator``: ``--devices`` devices sending one message of 3 readings (temperature,
  pressure, humidity) a second, event times jittered by up to ±2 s (the stream of
  ``benchmarks/processors.py``, without its re-sends, which the engine drops before the store).

Each is written through ``DuckDBStore.write`` (log positions filled as the engine fills them),
then a fresh ``Engine`` (default settings) restores nothing and replays the whole log, timed
from the first replay read to the stored checkpoint. **Baseline in the same run**: the same
batches through ``StreamProcessors.on_batch`` alone, in memory (no store). Target: replay at
>= 100,000 readings/s on DuckDB. Also printed: the wall time spent in each store call (reads
run on the store's thread while the previous batch is processed). ``--profile`` prints the top
of a cProfile of the replay (the event loop's thread only). ``--store postgresql`` replays from
``PostgresStore`` on a throwaway server instead (tests/servers.py; needs the PostgreSQL binaries).

    .venv/bin/python benchmarks/replay.py [--rows 200000] [--shapes query,simulator]
        [--devices 10000] [--profile] [--store postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import psycopg

from _harness import free_port, machine, source_revision, stop_on_sigterm, table
from fleetstream.adapters.store.duckdb import DuckDBStore
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.config import EngineSettings, StreamSettings
from fleetstream.domain.batch import Batch
from fleetstream.domain.clock import SystemClock
from fleetstream.engine.fanout import Hub
from fleetstream.engine.pipeline import Engine
from fleetstream.engine.processors import StreamProcessors
from fleetstream.ports import Bus, Store
from processors import Fleet, stream
from query_postgres import columns

TARGET_RATE = 100_000
PER_WRITE = 50_000


def batches(shape: str, rows: int, devices: int) -> Iterator[Batch]:
    """The shape's readings, about ``PER_WRITE`` rows a batch, log positions filled."""
    seq = 0
    if shape == "query":
        rnd = np.random.default_rng(7)
        for first in range(0, rows, PER_WRITE):
            batch = columns(first, min(PER_WRITE, rows - first), rows, rnd)
            seq += len(batch)
            yield batch
        return
    fleet = Fleet(devices=devices, duplicates=0.0, batch_rows=PER_WRITE)
    seconds = -(-rows // (devices * fleet.sensors))
    for batch, _ in stream(fleet, seconds):
        batch.seq = list(range(seq + 1, seq + 1 + len(batch)))
        seq += len(batch)
        yield batch


def open_store(url: str) -> Store:
    return PostgresStore(url) if url.startswith("postgresql://") else DuckDBStore(url)


async def fill(url: str, shape: str, rows: int, devices: int) -> list[Batch]:
    store = open_store(url)
    await store.start()
    kept = []
    try:
        for batch in batches(shape, rows, devices):
            await store.write(batch)
            kept.append(batch)
    finally:
        await store.close()
    return kept


def timed(store: Store, spent: dict[str, float]) -> None:
    """Add the wall time of the store calls a replay makes to ``spent`` (by method name)."""
    for name in ("replay", "write_derived", "load_twins"):
        method = getattr(store, name)

        async def call(*args: Any, _method: Any = method, _name: str = name) -> Any:
            began = time.perf_counter()
            try:
                return await _method(*args)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - began

        setattr(store, name, call)


async def replay(url: str, profile: cProfile.Profile | None, spent: dict[str, float]) -> tuple[int, float]:
    """Replay the whole log with a fresh engine (no rules defined): (records replayed, wall seconds)."""
    store = open_store(url)
    await store.start()
    timed(store, spent)
    clock = SystemClock()
    engine = Engine(cast(Bus, None), store, Hub(clock.monotonic), clock, EngineSettings(), StreamSettings())
    try:
        if profile is not None:
            profile.enable()
        began = time.perf_counter()
        await engine._recover()
        took = time.perf_counter() - began
        if profile is not None:
            profile.disable()
    finally:
        await store.close()
    return engine.replayed, took


def processors_alone(kept: list[Batch]) -> float:
    """Seconds of ``StreamProcessors.on_batch`` over the batches, in memory."""
    processors = StreamProcessors(StreamSettings())
    now = SystemClock().now_us()
    began = time.perf_counter()
    for batch in kept:
        processors.on_batch(batch, now)
    return time.perf_counter() - began


def measure(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleetstream-replay-") as tmp:
        if args.store == "duckdb":
            url = f"duckdb:///{Path(tmp) / 'fleetstream.duckdb'}"
        else:
            name = f"replay_{shape}_{os.getpid()}"
            with psycopg.connect(args.postgres_url, autocommit=True) as con:
                con.execute(f"CREATE DATABASE {name}")
            url = args.postgres_url.rsplit("/", 1)[0] + f"/{name}"
        kept = asyncio.run(fill(url, shape, args.rows, args.devices))
        rows = sum(len(b) for b in kept)
        alone = processors_alone(kept)
        del kept
        profile = cProfile.Profile() if args.profile else None
        spent: dict[str, float] = {}
        replayed, took = asyncio.run(replay(url, profile, spent))
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(35)
        print(out.getvalue())
    print(
        f"{shape}: wall s in store calls (reads overlap processing): "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(spent.items())),
        flush=True,
    )
    return {"shape": shape, "rows": rows, "replayed": replayed, "replay_s": took, "alone_s": alone}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="readings per shape (default 1M)")
    p.add_argument("--shapes", default="query,simulator", help="comma-separated: query, simulator")
    p.add_argument("--devices", type=int, default=10_000, help="devices of the simulator shape")
    p.add_argument("--profile", action="store_true", help="print a cProfile of each replay")
    p.add_argument(
        "--store", choices=("duckdb", "postgresql"), default="duckdb", help="the store replayed from"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    began = datetime.now(UTC)
    print(f"replay benchmark, {began:%Y-%m-%d %H:%M} UTC, fleetstream at {source_revision()}")
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    server = None
    if args.store == "postgresql":  # a throwaway server (tests/servers.py), stopped at the end
        from tests.servers import Postgres  # importable once query_postgres put the repository on the path

        server = Postgres(free_port(), workdir=Path(tempfile.mkdtemp(prefix="fleetstream-replay-pg-")))
        server.start()
        args.postgres_url = server.url()
    try:
        results = [measure(shape, args) for shape in args.shapes.split(",")]
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
    lines = []
    met = True
    for r in results:
        rate = r["replayed"] / r["replay_s"]
        alone = r["rows"] / r["alone_s"]
        met = met and rate >= TARGET_RATE and r["replayed"] == r["rows"]
        lines.append(
            [r["shape"], f"{r['rows']:,}", f"{r['replay_s']:.1f}", f"{rate:,.0f}", f"{alone:,.0f}",
             f"{rate / alone:.0%}"]
        )  # fmt: skip
    print(
        "\n"
        + table(["shape", "readings", "replay s", "replay rec/s", "processors alone rec/s", "ratio"], lines)
    )
    print(f"replay >= {TARGET_RATE:,} readings/s ({args.store}): {'met' if met else 'MISSED'}")
    print(f"took {(datetime.now(UTC) - began).total_seconds():.0f} s")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
