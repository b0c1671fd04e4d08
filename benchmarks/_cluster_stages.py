"""Per-reading CPU cost of each Python stage of cluster mode, timed in-process on the benchmark's load.

Not a benchmark itself: ``cluster_e2e.py`` prints these beside the end-to-end figures so the
bottleneck can be named with numbers (a stage costing X µs a reading caps its process at
1/X readings/s on one core). Each stage runs on exactly the data the pipeline handles: the
gateway's decode of the benchmark's bodies, the codec's packs of those batches, the worker's join
of them into per-partition batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fleetstream.adapters.bus.codec import read_pack, split_by_partition
from fleetstream.cluster.partitions import partition_batch
from fleetstream.config import Settings
from fleetstream.domain.batch import Batch
from fleetstream.engine.processors import StreamProcessors
from fleetstream.ingest.decode import decode_body
from fleetstream.ingest.formats import DecodeContext


def gateway_batches(bodies: list[bytes]) -> list[Batch]:
    """The batches the gateway publishes for ``bodies`` (decoded as it decodes them)."""
    ctx = DecodeContext(time.time_ns() // 1000, 10_000_000)
    return [decode_body(body, "json", ctx, 10_000).batch for body in bodies]


def pipeline_messages(batches: list[Batch], partitions: int) -> list[tuple[int, bytes]]:
    """(partition, bytes) of every Kafka message the gateway produces for ``batches``."""
    return [piece for batch in batches for piece in split_by_partition(batch, partitions)]


def _per_reading_us(step: Callable[[], Any], readings: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best / readings * 1e6


def stage_costs(bodies: list[bytes], partitions: int, readings: int) -> dict[str, float]:
    """µs of CPU per reading of each stage (best of 3 runs over the whole load)."""
    batches = gateway_batches(bodies)
    messages = pipeline_messages(batches, partitions)
    by_partition: dict[int, list[tuple[int, bytes]]] = {}
    for offset, (partition, data) in enumerate(messages):
        by_partition.setdefault(partition, []).append((offset, data))

    def decode_packs() -> list[tuple[int, list[Any]]]:
        return [(p, [(o, read_pack(d)) for o, d in items]) for p, items in by_partition.items()]

    decoded = decode_packs()

    def join() -> list[Batch]:
        return [partition_batch(p, pieces) for p, pieces in decoded]

    joined = join()
    stream = Settings().stream

    def process() -> None:
        processors = {p: StreamProcessors(stream) for p in by_partition}
        now = time.time_ns() // 1000
        for (p, _), batch in zip(decoded, joined, strict=True):
            processors[p].on_batch(batch, now)

    return {
        "gateway: JSON decode + validate (decode_body)": _per_reading_us(
            lambda: gateway_batches(bodies), readings
        ),
        "gateway: split + encode packs": _per_reading_us(
            lambda: pipeline_messages(batches, partitions), readings
        ),
        "worker: decode packs": _per_reading_us(decode_packs, readings),
        "worker: join per partition + log positions": _per_reading_us(join, readings),
        "worker: stream processors (windows, twins, stats)": _per_reading_us(process, readings, 1),
    }
