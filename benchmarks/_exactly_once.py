"""The benchmark's load with re-sends and invalid items, and the exactly-once check of what was stored.

Not a benchmark itself: ``cluster_e2e.py`` posts :func:`make_load`'s requests, keeps every 202's
``rejected`` indexes with :class:`Acks`, and at the end compares PostgreSQL's readings with what
the senders had acknowledged (:func:`check_stored`): every acknowledged reading stored, once, and
nothing stored that was not acknowledged.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

BASE = datetime(2024, 6, 1, tzinfo=UTC)
ISO_BASE = "2024-06-01T00:00:00Z"
BASE_US = int(BASE.timestamp() * 1_000_000)
Key = tuple[str, str, int]  # device_id, sensor, event time (µs): a reading without a message id


@dataclass
class Load:
    """The requests, and for each its items' keys (``None`` for an item meant to be rejected)."""

    bodies: list[bytes]
    keys: list[list[Key | None]]
    readings: int  # distinct valid readings
    resent: int  # items repeating a reading sent before (in the same request or an earlier one)
    invalid: int


def make_load(
    readings: int,
    per_request: int,
    devices: int,
    spacing_ms: float = 10.0,
    duplicates: float = 0.0,
    invalid: float = 0.0,
    seed: int = 6,
) -> Load:
    """Requests of one-reading messages, devices round-robin, ``spacing_ms`` apart per device.

    ``duplicates`` of the requests' items are re-sends of a reading already in the load (half of
    them of this request's, half of one up to 20 requests back); each valid item has the chance
    ``invalid`` of bringing along an item whose value is not a number (the gateway rejects those
    by index and accepts the rest).
    """
    rng = random.Random(seed)
    bodies: list[bytes] = []
    keys: list[list[Key | None]] = []
    resent = bad = 0
    sent: list[list[dict[str, Any]]] = []  # each request's valid items
    for first in range(0, readings, per_request):
        items: list[dict[str, Any]] = []
        for i in range(first, min(first + per_request, readings)):
            ts = (BASE + timedelta(milliseconds=i // devices * spacing_ms)).isoformat().replace("+00:00", "Z")
            items.append({"device_id": f"dev-{i % devices}", "timestamp": ts, "sensor": "t", "value": i % 97})
        own = list(items)
        for _ in range(round(len(own) * duplicates)):
            back = 0 if rng.random() < 0.5 or not sent else rng.randint(1, min(20, len(sent)))
            item = rng.choice(own if back == 0 else sent[-back])
            items.insert(rng.randint(0, len(items)), item)
            resent += 1
        sent.append(own)
        item_keys: list[Key | None] = [_key(item) for item in items]
        for _ in range(sum(rng.random() < invalid for _ in own)):
            at = rng.randint(0, len(items))
            items.insert(at, {"device_id": "dev-0", "timestamp": ISO_BASE, "sensor": "t", "value": "x"})
            item_keys.insert(at, None)
            bad += 1
        bodies.append(msgspec.json.encode(items))
        keys.append(item_keys)
    return Load(bodies, keys, readings, resent, bad)


def _key(item: dict[str, Any]) -> Key:
    ts = datetime.fromisoformat(item["timestamp"])
    return (item["device_id"], item["sensor"], (ts - BASE) // timedelta(microseconds=1) + BASE_US)


@dataclass
class Acks:
    """What the senders were told: the keys of every item a 202 accepted, and the surprises."""

    accepted: Counter[Key] = field(default_factory=Counter)
    requests: int = 0
    refused: int = 0  # answers other than 202 (the request is sent again)
    wrong_rejections: list[str] = field(default_factory=list)

    def take(self, keys: list[Key | None], body: bytes) -> None:
        """Record a 202's body for the request whose items have ``keys``."""
        rejected = {r["index"] for r in msgspec.json.decode(body)["rejected"]}
        meant = {i for i, k in enumerate(keys) if k is None}
        if rejected != meant:
            self.wrong_rejections.append(f"rejected {sorted(rejected)}, meant {sorted(meant)}")
        self.accepted.update(k for i, k in enumerate(keys) if k is not None and i not in rejected)
        self.requests += 1


@dataclass(frozen=True)
class Verdict:
    """Stored against acknowledged readings."""

    acknowledged: int  # distinct readings acknowledged with a 202
    stored: int  # rows in the readings table
    distinct: int  # distinct (device, sensor, time) among them
    missing: int  # acknowledged, not stored
    doubled: int  # stored more than once
    unexpected: int  # stored, never acknowledged

    @property
    def exactly_once(self) -> bool:
        return self.missing == self.doubled == self.unexpected == 0 and self.stored == self.acknowledged

    def __str__(self) -> str:
        verdict = "exactly once" if self.exactly_once else "NOT exactly once"
        return (
            f"{verdict}: {self.acknowledged:,} readings acknowledged, {self.stored:,} rows stored "
            f"({self.distinct:,} distinct), {self.missing:,} missing, {self.doubled:,} doubled, "
            f"{self.unexpected:,} never acknowledged"
        )


def check_stored(acks: Acks, stored_rows: list[tuple[str, str, int]]) -> Verdict:
    """Compare the readings table's (device_id, sensor, ts) rows with what was acknowledged."""
    stored = Counter(stored_rows)
    acknowledged = set(acks.accepted)
    return Verdict(
        acknowledged=len(acknowledged),
        stored=len(stored_rows),
        distinct=len(stored),
        missing=len(acknowledged - stored.keys()),
        doubled=sum(1 for n in stored.values() if n > 1),
        unexpected=len(stored.keys() - acknowledged),
    )


def locate(bootstrap: str, topic: str, keys: set[Key]) -> dict[tuple[int, int], int]:
    """(partition, offset) of the Kafka messages holding ``keys``, with how many of them each holds."""
    from confluent_kafka import Consumer

    from fleetstream.adapters.bus.codec import read_pack

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"locate-{id(keys)}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    found: Counter[tuple[int, int]] = Counter()
    idle = 0
    try:
        while idle < 5:
            messages = consumer.consume(1000, 1.0)
            idle = 0 if messages else idle + 1
            for m in messages:
                if m.error() is not None:
                    continue
                pack = read_pack(m.value() or b"")
                for key in zip(pack.device_id, pack.sensor, pack.ts, strict=True):
                    if key in keys:
                        found[(m.partition(), m.offset())] += 1
    finally:
        consumer.close()
    return dict(found)
