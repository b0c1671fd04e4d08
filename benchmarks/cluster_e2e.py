"""End-to-end throughput of cluster mode: HTTP → gateway → Kafka → workers → PostgreSQL.

What it measures, in one run on a throwaway Tansu broker and PostgreSQL (``tests/servers.py``):

- the broker alone with confluent-kafka: produce rate (acks=all, idempotent) and one consumer's
  consume rate of exactly the messages the gateway produces for this load (same count, same
  bytes, same partitions: the load is decoded and packed beforehand as the gateway does it), in
  messages/s and readings/s;
- the cluster: one ``fleetstream gateway`` and ``--workers`` ``fleetstream worker`` processes on
  ``--partitions`` partitions; ``--readings`` readings (one per device message, ``--batch``
  messages per request, ``--senders`` concurrent senders) posted to the gateway; the acknowledged
  rate, the end-to-end rate (first request sent → every reading stored in PostgreSQL), its ratio
  to the broker's consume rate, and the CPU seconds of every process over that window;
- the CPU cost per reading of each Python stage on the same load, timed in this process
  (``_cluster_stages.py``), so the bottleneck is named with numbers;
- with ``--embedded``, ``fleetstream up`` (DuckDB, in-process bus) posted the same requests;
- exactly once: the load re-sends ``--duplicates`` of its readings and mixes in ``--invalid``
  items the gateway rejects by index; every 202's ``rejected`` list is kept, and at the end the
  readings table must hold every acknowledged reading once and nothing else (``_exactly_once.py``;
  the run fails otherwise). ``--kill-worker F`` SIGKILLs the first worker once F of the requests
  are acknowledged and starts a new one in its place (the survivor takes its partitions over, the
  newcomer rejoins; the killed worker's CPU is then missing from the CPU table).

    PYTHONPATH=src .venv/bin/python benchmarks/cluster_e2e.py [--readings 200000] [--workers 2]
        [--profile DIR] [--embedded] [--duplicates 0.02] [--invalid 0.001] [--kill-worker 0.5]

``--profile DIR`` runs the gateway and the first worker under cProfile (DIR/gateway.prof,
DIR/worker.prof) and prints each one's top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from _cluster_stages import gateway_batches, pipeline_messages, stage_costs
from _exactly_once import Acks, Load, Verdict, check_stored, locate, make_load
from _harness import cpu_of, start_fleetstream, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.servers
from tests.servers import Postgres, Tansu, free_port

DEVICES = 1000


def broker_rates(bootstrap: str, messages: list[tuple[int, bytes]], partitions: int) -> tuple[float, float]:
    """Seconds to produce (acks=all, idempotent) and to consume ``messages`` with confluent-kafka."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic].result(30)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    producer.produce(topic, b"", partition=0)  # connected, producer id obtained
    producer.flush(30)
    started = time.perf_counter()
    for partition, value in messages:
        while True:
            try:
                producer.produce(topic, value, partition=partition)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0
    produce = time.perf_counter() - started
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest"})
    assigned: list[float] = []
    # timed from the assignment (the fetches start then), not from the first message: the first
    # fetch may bring every message at once
    consumer.subscribe([topic], on_assign=lambda *_: assigned.append(time.perf_counter()))
    got = 0
    while got < len(messages) + 1:
        batch = consumer.consume(min(1000, len(messages) + 1 - got), 1.0)  # never waits out the timeout
        got += sum(1 for m in batch if m.error() is None)
    consume = time.perf_counter() - assigned[0]
    consumer.close()
    return produce, consume


def log_end(bootstrap: str, topic: str, partitions: int) -> int:
    """The sum of the topic's partitions' end offsets (messages in the log)."""
    return sum(log_ends(bootstrap, topic, partitions).values())


def log_ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end offset."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in range(partitions)}
    finally:
        consumer.close()


async def post_all(
    url: str,
    load: Load,
    senders: int,
    acks: Acks | None = None,
    at: tuple[int, Callable[[], None]] | None = None,
) -> float:
    """Post every request (again after a non-202); returns when it started (perf_counter).

    Each 202 goes to ``acks``; ``at`` = (n, action) runs the action once n requests are acknowledged.
    """
    queue = list(reversed(range(len(load.bodies))))
    headers = {"content-type": "application/json"}
    done = 0

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal done
        while queue:
            n = queue.pop()
            while (
                response := await client.post(url, content=load.bodies[n], headers=headers)
            ).status_code != 202:
                if acks is not None:
                    acks.refused += 1
                await asyncio.sleep(0.1)
            if acks is not None:
                acks.take(load.keys[n], response.content)
            done += 1
            if at is not None and done == at[0]:
                at[1]()

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(sender(client) for _ in range(senders)))
    return started


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            with contextlib.suppress(OSError):
                total += cpu_of(pid).total_s
        out[name] = total
    return out


def postgres_pids(postmaster: int) -> list[int]:
    """The postmaster and its backends (a backend per worker connection, plus its helpers)."""
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout
    return [postmaster, *(int(p) for p in children.split())]


def run_cluster(
    args: argparse.Namespace, load: Load, tansu: Tansu, pg: Postgres
) -> tuple[dict[str, float], Verdict]:
    store = pg.create_database()
    bus = f"kafka://{tansu.bootstrap}/readings?partitions={args.partitions}"
    env = {**os.environ, "FLEETSTREAM_LOG_LEVEL": args.log_level}
    port = free_port()

    def command(role: str, profile: str | None, *extra: str) -> list[str]:
        profiled = ["-m", "cProfile", "-o", str(args.profile / profile)] if args.profile and profile else []
        return [sys.executable, *profiled, "-m", "fleetstream", role, "--bus", bus, *extra]

    gateway = subprocess.Popen(command("gateway", "gateway.prof", "--port", str(port)), env=env)
    workers = [
        subprocess.Popen(command("worker", "worker.prof" if i == 0 else None, "--store", store), env=env)
        for i in range(args.workers)
    ]
    try:
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
        assert tansu.proc is not None
        assert pg.proc is not None
        pids = {
            "gateway": [gateway.pid],
            "workers": [w.pid for w in workers],
            "broker (Tansu)": [tansu.proc.pid],
            "PostgreSQL": postgres_pids(pg.proc.pid),
            "load generator": [os.getpid()],
        }
        before = cpu_seconds(pids)
        acks = Acks()

        def kill_and_replace() -> None:
            workers[0].send_signal(signal.SIGKILL)
            print(f"SIGKILLed worker {workers[0].pid} after {acks.requests:,} requests; starting another")
            workers.append(subprocess.Popen(command("worker", None, "--store", store), env=env))

        at = (round(args.kill_worker * len(load.bodies)), kill_and_replace) if args.kill_worker else None
        started = asyncio.run(post_all(f"{url}/api/v1/telemetry", load, args.senders, acks, at))
        acked = time.perf_counter() - started
        end = log_end(tansu.bootstrap, "readings", args.partitions)
        with psycopg.connect(store, autocommit=True) as con:
            # every message is stored once the checkpoints (written in the same transactions as
            # the readings) reach the log's end; a count(*) of the growing table every 0.1 s would
            # itself take a core of PostgreSQL
            checkpointed = "SELECT coalesce(sum(next_offset), 0) FROM partition_checkpoints"
            while con.execute(checkpointed).fetchone()[0] < end:  # type: ignore[index]
                time.sleep(0.02)
            # Tansu reports a partition's end as the first offset of its last record batch + 1, not
            # the last offset + 1: the checkpoints can reach that "end" a few messages early. So
            # wait for the readings themselves too, until there are all or none came for 5 s.
            wanted, count, since = len(acks.accepted), -1, time.perf_counter()
            while count < wanted and time.perf_counter() - since < 5:
                now = con.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
                if now != count:
                    count, since = now, time.perf_counter()
                time.sleep(0.05)
            stored = time.perf_counter() - started
            after = cpu_seconds(pids)
            rows = con.execute("SELECT device_id, sensor, ts FROM readings").fetchall()
        verdict = check_stored(acks, rows)
        print(f"{acks.refused} requests were refused (and sent again)")
        if verdict.missing:  # where they are in the log, beside the partitions' checkpoints
            missing = set(acks.accepted) - {tuple(r) for r in rows}
            found = locate(tansu.bootstrap, "readings", missing)
            lost = len(missing) - sum(found.values())
            print(f"missing readings by (partition, offset): {found}; {lost} not in the log")
            with psycopg.connect(store, autocommit=True) as con:
                cps = con.execute(
                    "SELECT partition, next_offset FROM partition_checkpoints ORDER BY 1"
                ).fetchall()
            print("checkpoints:", cps)
        assert not acks.wrong_rejections, acks.wrong_rejections[:3]
    finally:
        for p in [gateway, *workers]:
            p.terminate()
        for p in [gateway, *workers]:
            p.wait(30)
    cpu = {f"CPU s: {name}": after[name] - before[name] for name in pids}
    return {"acked_s": acked, "stored_s": stored, **cpu}, verdict


def run_embedded(load: Load, senders: int) -> float:
    """Seconds for ``fleetstream up`` to acknowledge (durably) every request."""
    with tempfile.TemporaryDirectory() as data:
        server = start_fleetstream(Path(data), Path(data) / "up.log")
        try:
            started = asyncio.run(post_all(f"{server.url}/api/v1/telemetry", load, senders))
            return time.perf_counter() - started
        finally:
            server.stop()


def print_profile(path: Path, lines: int) -> None:
    print(f"\n{path.name}: top functions by own time")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="device messages per request")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--profile", type=Path, help="cProfile the gateway and the first worker into DIR")
    parser.add_argument("--embedded", action="store_true", help="also run fleetstream up on the same load")
    parser.add_argument("--spacing-ms", type=float, default=10.0, help="a device's readings' spacing")
    parser.add_argument("--log-level", default="warning", help="of the gateway and the workers")
    parser.add_argument("--duplicates", type=float, default=0.02, help="share of readings re-sent")
    parser.add_argument("--invalid", type=float, default=0.001, help="chance of an invalid item per reading")
    parser.add_argument(
        "--kill-worker",
        type=float,
        help="SIGKILL the first worker after this share of requests, start another",
    )
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    load = make_load(args.readings, args.batch, DEVICES, args.spacing_ms, args.duplicates, args.invalid)
    requests = load.bodies
    messages = pipeline_messages(gateway_batches(requests), args.partitions)
    n, size = len(messages), sum(len(v) for _, v in messages) / len(messages)
    tansu, pg = Tansu.launch(), Postgres.launch()
    try:
        produce_s, consume_s = broker_rates(tansu.bootstrap, messages, args.partitions)
        cluster, verdict = run_cluster(args, load, tansu, pg)
    finally:
        tansu.close()
        pg.close()
    embedded_s = run_embedded(load, args.senders) if args.embedded else None
    r = args.readings
    e2e, consume = r / cluster["stored_s"], r / consume_s
    print(f"{r:,} readings, {len(requests):,} requests of {args.batch}, {DEVICES} devices; {n:,} Kafka")
    print(f"messages of {size:,.0f} bytes on average ({r / n:,.1f} readings each); {args.workers} workers")
    print(f"the load also re-sent {load.resent:,} readings and held {load.invalid:,} invalid items")
    print(verdict)
    rows: list[list[object]] = [
        ["broker alone: produce (confluent-kafka)", f"{r / produce_s:,.0f}", f"{n / produce_s:,.0f}", ""],
        ["broker alone: consume (confluent-kafka)", f"{consume:,.0f}", f"{n / consume_s:,.0f}", "1"],
        [
            "gateway acknowledged",
            f"{r / cluster['acked_s']:,.0f}",
            "",
            f"{r / cluster['acked_s'] / consume:.4f}",
        ],
        ["end to end stored", f"{e2e:,.0f}", "", f"{e2e / consume:.4f}"],
    ]
    if embedded_s is not None:
        rows.append(
            [
                "`fleetstream up` (embedded) stored",
                f"{r / embedded_s:,.0f}",
                "",
                f"{r / embedded_s / consume:.4f}",
            ]
        )
    print(table(["what", "readings/s", "messages/s", "/ broker consume"], rows))
    window = cluster["stored_s"]
    cpu_rows = [
        [k.removeprefix("CPU s: "), f"{v:.1f}", f"{v / window:.0%}"]
        for k, v in cluster.items()
        if k.startswith("CPU")
    ]
    print(f"\nCPU over the end-to-end window ({window:.1f} s; 2 cores = 200%):")
    print(table(["process", "CPU s", "of one core"], cpu_rows))
    costs = stage_costs(requests, args.partitions, r)
    print("\nCPU per reading of each Python stage (in this process, same load):")
    print(
        table(
            ["stage", "µs/reading", "one core's limit readings/s"],
            [[k, f"{v:.2f}", f"{1e6 / v:,.0f}"] for k, v in costs.items()],
        )
    )
    if args.profile:
        for name in ("gateway.prof", "worker.prof"):
            if (args.profile / name).exists():
                print_profile(args.profile / name, 18)
    if not verdict.exactly_once:
        sys.exit(1)


if __name__ == "__main__":
    main()
