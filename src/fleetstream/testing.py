"""Test doubles shipped with the package: an in-memory store, a manual clock, a pipeline harness.

A pipeline test reads like::

    async with Harness() as h:
        result = await h.post([{"device_id": "1", "ts": "...", "sensor": "t", "value": 1.0}])
        assert h.store.readings == [...]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

import msgspec

from fleetstream.adapters.bus.memory import MemoryBus
from fleetstream.config import Settings
from fleetstream.domain.batch import Batch
from fleetstream.domain.buckets import Buckets
from fleetstream.domain.clock import ManualClock
from fleetstream.domain.records import DedupKey, DeviceMessage, Reading
from fleetstream.ingest.gateway import IngestResult
from fleetstream.ports import DeadLetter, MetricsQuery, SeriesQuery
from fleetstream.runtime import Runtime

__all__ = ["Harness", "InMemoryStore", "ManualClock"]


class InMemoryStore:
    """The :class:`~fleetstream.ports.Store` in a list; ``fail_next`` makes the next write fail."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self.messages: list[DeviceMessage] = []
        self.letters: list[DeadLetter] = []
        self.fail_next: BaseException | None = None
        self.writes = 0

    @property
    def readings(self) -> list[Reading]:
        """Every stored reading, in write order."""
        return [r for m in self.messages for r in m.readings]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def write(self, batch: Batch) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.writes += 1
        self.messages.extend(batch.messages())

    def _keys(self) -> dict[DedupKey, int]:
        keys: dict[DedupKey, int] = {}
        for m in self.messages:
            if m.readings:
                keys.update((r.dedup_key, r.ts) for r in m.readings)
            else:
                keys[m.dedup_key] = m.ts
        return keys

    async def stored_keys(self, items: Sequence[tuple[DedupKey, int]]) -> set[DedupKey]:
        keys = self._keys()
        return {key for key, _ in items if key in keys}

    async def recent_keys(self, since: int) -> list[tuple[DedupKey, int]]:
        return [(k, ts) for k, ts in self._keys().items() if ts >= since]

    async def log_position(self) -> tuple[int, int | None]:
        if not self.messages:
            return 0, None
        # A message's rows have consecutive positions from its own seq on.
        last = max(m.seq + max(len(m.readings), 1) - 1 for m in self.messages)
        return last, max(m.ts for m in self.messages)

    async def query_metrics(self, query: MetricsQuery) -> dict[str, dict[str, Any]]:
        values: dict[str, list[float]] = {s: [] for s in query.sensors}
        for r in self.readings:
            inside = query.start <= r.ts and (r.ts <= query.end if query.end_inclusive else r.ts < query.end)
            if not inside or (query.sensors and r.sensor not in query.sensors):
                continue
            if query.device_ids and r.device_id not in query.device_ids:
                continue
            values.setdefault(r.sensor, []).append(r.value)
        return {s: {a: _agg(a, v) for a in dict.fromkeys(query.aggs)} for s, v in sorted(values.items())}

    async def query_series(self, query: SeriesQuery) -> dict[str, list[dict[str, Any]]]:
        buckets = Buckets(query.bucket, query.tz)
        values: dict[str, dict[int, list[float]]] = {s: {} for s in query.sensors}
        for r in self.readings:
            if not query.start <= r.ts < query.end or (query.sensors and r.sensor not in query.sensors):
                continue
            if query.device_ids and r.device_id not in query.device_ids:
                continue
            values.setdefault(r.sensor, {}).setdefault(buckets.start_of(r.ts), []).append(r.value)
        aggs = dict.fromkeys(query.aggs)
        return {
            s: [{"t": t, **{a: _agg(a, v) for a in aggs}} for t, v in sorted(by_t.items())]
            for s, by_t in sorted(values.items())
        }

    async def sensors(self) -> set[str]:
        return {r.sensor for r in self.readings}

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        first = len(self.letters) + 1
        self.letters.extend(replace(d, id=first + i) for i, d in enumerate(letters))

    async def dead_letters(self, source: str | None = None, limit: int = 100) -> list[DeadLetter]:
        chosen = [d for d in reversed(self.letters) if source is None or d.source == source]
        return chosen[:limit]


def _agg(name: str, values: list[float]) -> float | int | None:
    if name == "count":
        return len(values)
    if not values:
        return None
    if name in ("p50", "p95", "p99"):
        if len(values) == 1:
            return values[0]
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cuts[int(name[1:]) - 1]
    if name == "stddev":
        return statistics.stdev(values) if len(values) > 1 else None
    if name == "min":
        return min(values)
    if name == "max":
        return max(values)
    if name == "sum":
        return float(sum(values))
    return statistics.fmean(values)


class Harness:
    """The embedded pipeline (memory bus, in-memory store, manual clock), with no HTTP."""

    def __init__(self, settings: Settings | None = None, *, start_us: int = 1_700_000_000_000_000) -> None:
        self.clock = ManualClock(start_us)
        self.store = InMemoryStore()
        self.settings = settings or Settings(simulator={"enabled": False})
        self.runtime = Runtime(
            self.settings,
            bus=MemoryBus(max_pending=self.settings.ingest.queue_max_records),
            store=self.store,
            clock=self.clock,
        )

    async def __aenter__(self) -> Harness:
        await self.runtime.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.runtime.stop()

    async def post(self, body: Any, content_type: str = "application/json") -> IngestResult:
        """Ingest a body (bytes, or anything JSON-encodable) as the HTTP route would."""
        raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
        return await self.runtime.gateway.ingest(raw, content_type)
