"""End-to-end throughput of cluster mode: HTTP → gateway → Kafka → workers → PostgreSQL.

What it measures, in one run on a throwaway Tansu broker and PostgreSQL (``tests/servers.py``):

- the broker alone with confluent-kafka: produce rate (acks=all) and one consumer's consume rate
  of as many messages as the load makes, of the same size;
- the cluster: one ``fleetstream gateway`` and ``--workers`` ``fleetstream worker`` processes on
  ``--partitions`` partitions; ``--readings`` readings (one per message, 500 messages per request,
  4 concurrent senders) posted to the gateway; the acknowledged rate, and the end-to-end rate
  (first request sent → every reading stored in PostgreSQL), and its ratio to the broker's
  consume rate.

    PYTHONPATH=src .venv/bin/python benchmarks/cluster_e2e.py [--readings 100000] [--workers 2]
        [--profile worker.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import psycopg
from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.servers
from tests.servers import Postgres, Tansu, free_port

BASE = datetime(2024, 6, 1, tzinfo=UTC)
DEVICES = 1000


def bodies(readings: int) -> list[bytes]:
    """Requests of 500 one-reading messages, devices round-robin, a second apart per device."""
    out = []
    for first in range(0, readings, 500):
        items = []
        for i in range(first, min(first + 500, readings)):
            ts = (BASE + timedelta(seconds=i // DEVICES)).isoformat().replace("+00:00", "Z")
            items.append({"device_id": f"dev-{i % DEVICES}", "timestamp": ts, "sensor": "t", "value": i % 97})
        out.append(msgspec.json.encode(items))
    return out


def broker_rates(bootstrap: str, messages: int, size: int) -> tuple[float, float]:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    payload = b"x" * size
    started = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                producer.produce(topic, payload, str(i % DEVICES).encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    produce = messages / (time.perf_counter() - started)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
        }
    )
    consumer.subscribe([topic])
    got, started = 0, None
    while got < messages:
        batch = consumer.consume(1000, 1.0)
        if batch and started is None:
            started = time.perf_counter()
        got += sum(1 for m in batch if m.error() is None)
    consume = messages / (time.perf_counter() - (started or 0))
    consumer.close()
    return produce, consume


async def post_all(url: str, requests: list[bytes], senders: int) -> float:
    queue = list(reversed(requests))
    headers = {"content-type": "application/json"}

    async def sender(client: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            while (await client.post(url, content=body, headers=headers)).status_code != 202:
                await asyncio.sleep(0.1)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(sender(client) for _ in range(senders)))
    return started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--profile", type=Path, help="run the first worker under cProfile, writing here")
    args = parser.parse_args()
    requests = bodies(args.readings)
    tansu, pg = Tansu.launch(), Postgres.launch()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        produce, consume = broker_rates(tansu.bootstrap, args.readings, 60)
        store = pg.create_database()
        bus = f"kafka://{tansu.bootstrap}/readings?partitions={args.partitions}"
        env = {**os.environ, "FLEETSTREAM_LOG_LEVEL": "warning"}
        port = free_port()
        cli = [sys.executable, "-m", "fleetstream"]
        procs.append(subprocess.Popen([*cli, "gateway", "--bus", bus, "--port", str(port)], env=env))
        for i in range(args.workers):
            profiled = ["-m", "cProfile", "-o", str(args.profile)] if args.profile and i == 0 else []
            worker = [
                sys.executable,
                *profiled,
                "-m",
                "fleetstream",
                "worker",
                "--bus",
                bus,
                "--store",
                store,
            ]
            procs.append(subprocess.Popen(worker, env=env))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        time.sleep(8)  # the workers join their group
        started = asyncio.run(post_all(f"{url}/api/v1/telemetry", requests, 4))
        acked = time.perf_counter() - started
        with psycopg.connect(store, autocommit=True) as con:
            while con.execute("SELECT count(*) FROM readings").fetchone()[0] < args.readings:  # type: ignore[index]
                time.sleep(0.1)
        stored = time.perf_counter() - started
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        tansu.close()
        pg.close()
    e2e = args.readings / stored
    print(f"broker alone: produce {produce:,.0f} msg/s, consume {consume:,.0f} msg/s")
    print(f"gateway acknowledged {args.readings / acked:,.0f} readings/s")
    print(
        f"end to end ({args.workers} workers, {args.partitions} partitions): {e2e:,.0f} readings/s, "
        f"{e2e / consume:.2f} of the broker's consume rate"
    )


if __name__ == "__main__":
    main()
