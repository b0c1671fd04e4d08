"""Test doubles shipped with the package: an in-memory store, a manual clock, a pipeline harness.

A pipeline test reads like::

    async with Harness() as h:
        result = await h.post([{"device_id": "1", "ts": "...", "sensor": "t", "value": 1.0}])
        assert h.store.readings == [...]
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

import msgspec

from fleetstream.adapters.bus.memory import MemoryBus
from fleetstream.config import Settings
from fleetstream.domain.alerts import ACKNOWLEDGED, ACTIVE, Alert
from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.buckets import Buckets
from fleetstream.domain.clock import ManualClock
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.records import DedupKey, DeviceMessage, Reading
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import ALL_DEVICES, LateReadings, WindowAggregate
from fleetstream.ingest.gateway import IngestResult
from fleetstream.ports import (
    AlertQuery,
    Checkpoint,
    DeadLetter,
    Derived,
    EventQuery,
    MetricsQuery,
    SeriesQuery,
    WindowQuery,
)
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
        self.windows: dict[tuple[str, str, int, int], WindowAggregate] = {}
        self.late = LateReadings()
        self.events: dict[tuple[str, int], DeviceEvent] = {}
        self.twins: dict[str, DeviceTwin] = {}
        self.saved: Checkpoint | None = None
        self.model_rounds: dict[int, ModelRound] = {}
        self.alerts: dict[str, Alert] = {}
        self.defs: dict[str, dict[str, dict[str, Any]]] = {"rules": {}, "zones": {}}

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

    async def write_derived(self, derived: Derived, checkpoint: Checkpoint | None = None) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        for w in derived.windows:
            self.windows[(w.sensor, w.device_id, w.size_us, w.start)] = w
        stored_late = set(zip(self.late.seq, self.late.size_us, strict=True))
        fresh = [
            i
            for i, key in enumerate(zip(derived.late.seq, derived.late.size_us, strict=True))
            if key not in stored_late
        ]
        self.late.extend(derived.late.take(fresh))
        for e in derived.events:
            self.events.setdefault((e.device_id, e.seq), e)
        for t in derived.twins:
            self.twins[t.device_id] = DeviceTwin.from_state(t.to_state())
        for a in derived.alerts:
            new = replace(a)
            old = self.alerts.get(a.id)
            if old is not None and old.acknowledged_at is not None and new.acknowledged_at is None:
                new.acknowledged_at, new.acknowledged_by, new.ack_note = (
                    old.acknowledged_at,
                    old.acknowledged_by,
                    old.ack_note,
                )
                if new.state == ACTIVE:
                    new.state = ACKNOWLEDGED
            self.alerts[a.id] = new
        if checkpoint is not None:
            self.saved = checkpoint

    async def checkpoint(self) -> Checkpoint | None:
        return self.saved

    async def replay(self, after: int, max_records: int) -> Batch:
        ordered = sorted((m for m in self.messages if m.seq > after), key=lambda m: m.seq)
        return _log_batch(ordered, max_records, stop_after_bare=True)

    async def device_rows(self, device_id: str, until: int) -> Batch:
        chosen = [m for m in self.messages if m.device_id == device_id and m.ts <= until]
        return _log_batch(sorted(chosen, key=lambda m: m.seq), len(chosen) + 1, stop_after_bare=False)

    async def load_twins(self, device_ids: Collection[str]) -> list[DeviceTwin]:
        return [DeviceTwin.from_state(self.twins[d].to_state()) for d in device_ids if d in self.twins]

    async def list_twins(
        self, device_type: str | None, status: str | None, limit: int, offset: int
    ) -> tuple[int, list[DeviceTwin]]:
        chosen = [
            t
            for _, t in sorted(self.twins.items())
            if (device_type is None or t.device_type.lower() == device_type.lower())
            and (status is None or t.status == status)
        ]
        return len(chosen), chosen[offset : offset + limit]

    async def query_windows(self, query: WindowQuery) -> list[WindowAggregate]:
        chosen = [
            w
            for w in self.windows.values()
            if w.size_us == query.size_us
            and w.device_id == (query.device_id or ALL_DEVICES)
            and query.start <= w.start < query.end
            and (not query.sensors or w.sensor in query.sensors)
        ]
        return sorted(chosen, key=lambda w: (w.start, w.sensor))[: query.limit]

    async def device_events(self, query: EventQuery) -> list[DeviceEvent]:
        chosen = [
            e
            for (device, seq), e in sorted(self.events.items())
            if device == query.device_id
            and seq > query.after_seq
            and (query.start is None or e.ts >= query.start)
            and (query.end is None or e.ts < query.end)
            and (not query.types or e.type in query.types)
        ]
        return chosen[: query.limit]

    async def query_alerts(self, query: AlertQuery) -> tuple[int, list[Alert]]:
        found = [
            a
            for a in self.alerts.values()
            if (query.state is None or a.state == query.state)
            and (query.device_id is None or a.device_id == query.device_id)
            and (query.rule_id is None or a.rule_id == query.rule_id)
            and (query.start is None or a.opened_at >= query.start)
            and (query.end is None or a.opened_at < query.end)
        ]
        found.sort(key=lambda a: (-a.opened_at, a.id))
        page = found[query.offset : query.offset + query.limit]
        return len(found), [replace(a) for a in page]

    async def get_alert(self, alert_id: str) -> Alert | None:
        alert = self.alerts.get(alert_id)
        return None if alert is None else replace(alert)

    async def definitions(self, kind: str) -> dict[str, dict[str, Any]]:
        return dict(self.defs[kind])

    async def put_definition(self, kind: str, def_id: str, definition: dict[str, Any]) -> None:
        self.defs[kind][def_id] = dict(definition)

    async def delete_definition(self, kind: str, def_id: str) -> bool:
        return self.defs[kind].pop(def_id, None) is not None

    async def late_counts(self) -> dict[str, int]:
        if not len(self.late):
            return {}
        smallest = min(self.late.size_us)
        counts: dict[str, int] = {}
        for sensor, size in zip(self.late.sensor, self.late.size_us, strict=True):
            if size == smallest:
                counts[sensor] = counts.get(sensor, 0) + 1
        return dict(sorted(counts.items()))

    async def save_model_round(self, model_round: ModelRound) -> None:
        self.model_rounds[model_round.round] = model_round

    async def list_model_rounds(self) -> list[ModelRound]:
        return [self.model_rounds[n] for n in sorted(self.model_rounds)]


def _log_batch(ordered: list[DeviceMessage], max_records: int, *, stop_after_bare: bool) -> Batch:
    """Stored messages (in log order) as the batch the store's log gives back: rows keep their positions."""
    out = Batch()
    numbers = iter(message_numbers(len(ordered)))
    for m in ordered:
        if out.records >= max_records or (stop_after_bare and m.readings and out.events):
            break  # rows, then reading-less messages: the order the engine sees live
        number = next(numbers)
        out.messages_count += 1
        if not m.readings:
            out.events.append(m)
            out.event_msg.append(number)
            continue
        for i, r in enumerate(m.readings):
            out.seq.append(m.seq + i)
            out.device_id.append(r.device_id)
            out.ts.append(r.ts)
            out.sensor.append(r.sensor)
            out.value.append(r.value)
            out.unit.append(r.unit)
            out.device_type.append(r.device_type)
            out.msg_id.append(r.msg_id)
            out.kind.append(m.kind)
            out.msg.append(number)
            out.received_at.append(m.received_at)
    return out


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
