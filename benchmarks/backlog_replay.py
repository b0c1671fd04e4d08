"""A worker taking a backlog: readings/s from Kafka into PostgreSQL when the dedup memory cannot help.

The backlog (``--readings`` over ``--minutes`` of event time, ``--devices`` devices round-robin in
time order, ``--partitions`` partitions, ``--resent`` of them re-sent 60-600 s of event time
later, beyond the 35 s dedup memory) is published to a throwaway Tansu broker with no worker
running; then ONE ``fleetstream worker`` starts on an empty PostgreSQL and the clock runs until
every partition's checkpoint reaches the log's end. The worker's batches span minutes of event
time and its partitions run apart, so most keys are older than its memory's horizon: each such
key used to be looked up in the readings table. At the end the table must hold each reading
exactly once (re-sends dropped).

    PYTHONPATH=src .venv/bin/python benchmarks/backlog_replay.py [--readings 1000000] [--minutes 30]

The worker runs with the caller's ``PYTHONPATH``: point it at another checkout's ``src`` to
compare two versions on the same backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from _harness import cpu_of, table
from cluster_e2e import log_end, postgres_pids
from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.servers
from tests.servers import Postgres, Tansu

T0 = 1_717_200_000_000_000
PUBLISH_BATCH = 10_000


def backlog(readings: int, devices: int, minutes: float, resent: float, seed: int = 6) -> list[Batch]:
    """The backlog in publish batches, and how many distinct readings it holds (the first ``readings``)."""
    rng = random.Random(seed)
    step = minutes * 60_000_000 / (readings / devices)  # a device's spacing, µs
    later: dict[int, list[DeviceMessage]] = {}  # publish batch -> re-sends due then
    batches = []
    for first in range(0, readings, PUBLISH_BATCH):
        messages = []
        for i in range(first, min(first + PUBLISH_BATCH, readings)):
            device, ts = f"dev-{i % devices}", T0 + int(i // devices * step)
            message = DeviceMessage(
                device, ts, "telemetry", "Sensor", [Reading(device, ts, "t", float(i % 97))]
            )
            messages.append(message)
            if rng.random() < resent:  # due 60-600 s of event time later
                due = (
                    first // PUBLISH_BATCH
                    + int(rng.uniform(60e6, 600e6) / step * devices / PUBLISH_BATCH)
                    + 1
                )
                later.setdefault(due, []).append(message)
        messages += later.pop(first // PUBLISH_BATCH, [])
        batches.append(Batch.from_messages(messages))
    return batches


async def publish(bus_url: str, batches: list[Batch]) -> None:
    bus = KafkaBus(bus_url)
    await bus.start()
    try:
        for batch in batches:
            await bus.publish("readings", batch)
    finally:
        await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=30.0, help="event time the backlog spans")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--resent", type=float, default=0.01, help="share of readings re-sent minutes later")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    args = parser.parse_args()
    batches = backlog(args.readings, args.devices, args.minutes, args.resent)
    sent = sum(len(b) for b in batches)
    tansu, pg = Tansu.launch(), Postgres.launch()
    worker = None
    try:
        store = pg.create_database()
        bus_url = f"kafka://{tansu.bootstrap}/readings?partitions={args.partitions}"
        asyncio.run(publish(bus_url, batches))
        end = log_end(tansu.bootstrap, "readings", args.partitions)
        env = {**os.environ, "FLEETSTREAM_LOG_LEVEL": "warning"}
        command = [sys.executable, "-m", "fleetstream", "worker", "--bus", bus_url, "--store", store]
        started = time.perf_counter()
        worker = subprocess.Popen(command, env=env)
        assert pg.proc is not None
        with psycopg.connect(store, autocommit=True) as con:
            checkpointed = "SELECT coalesce(sum(next_offset), 0) FROM partition_checkpoints"
            while True:
                try:
                    if con.execute(checkpointed).fetchone()[0] >= end:  # type: ignore[index]
                        break
                except psycopg.errors.UndefinedTable:
                    pass  # the worker has not created it yet
                assert time.perf_counter() - started < args.timeout, "timed out"
                assert worker.poll() is None, "the worker exited"
                time.sleep(0.1)
            # Tansu's end offset is its last record batch's first offset + 1: wait for the rows too
            count, since = -1, time.perf_counter()
            while count < args.readings and time.perf_counter() - since < 5:
                now = con.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
                if now != count:
                    count, since = now, time.perf_counter()
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            worker_cpu = cpu_of(worker.pid).total_s
            pg_cpu = sum(cpu_of(p).total_s for p in postgres_pids(pg.proc.pid))
            row = con.execute(
                "SELECT count(*), count(DISTINCT (device_id, sensor, ts)) FROM readings"
            ).fetchone()
        assert row is not None
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        tansu.close()
        pg.close()
    r = args.readings
    print(
        f"backlog: {r:,} readings (+{sent - r:,} re-sent) over {args.minutes:g} min of event time, "
        f"{args.devices} devices, {args.partitions} partitions, {end:,} Kafka messages; one worker"
    )
    verdict = "exactly once" if row == (r, r) else "NOT exactly once"
    print(f"stored: {row[0]:,} rows, {row[1]:,} distinct ({verdict})")
    rows = [
        ["worker took the backlog", f"{elapsed:.1f}", f"{r / elapsed:,.0f}"],
        ["CPU s: worker / PostgreSQL", f"{worker_cpu:.1f} / {pg_cpu:.1f}", ""],
    ]
    print(table(["what", "seconds", "readings/s"], rows))
    if row != (r, r):
        sys.exit(1)


if __name__ == "__main__":
    main()
