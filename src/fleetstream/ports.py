"""The ports: small interfaces the core talks to, each with an explicit lifecycle.

Adapters are chosen by URL (see :mod:`fleetstream.adapters`), so the core never
imports a driver. Every method that may wait is ``async``; none blocks the loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetstream.domain.alerts import Alert
from fleetstream.domain.batch import Batch
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.records import DedupKey
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import LateReadings, WindowAggregate

READINGS_TOPIC = "readings"
"""The topic of device messages, keyed by device id."""


PartitionsHook = Callable[[list[int]], Awaitable[None] | None]
"""Called with partition numbers when a consumer gains or loses them (may be ``async``)."""


class BusBatch(Protocol):
    """Records handed to one consumer, to be committed once processed."""

    @property
    def batch(self) -> Batch:
        """The records (every published batch taken, joined), in log order."""
        ...

    async def commit(self) -> None:
        """Mark every record of the batch processed (and durable downstream)."""
        ...

    async def fail(self, exc: BaseException) -> None:
        """Processing failed: the records are not committed (senders see ``exc``, or a retry)."""
        ...


class Bus(Protocol):
    """The durable log between the gateway and the processors.

    ``publish`` returns only once the records are durable: for ``memory://``,
    once the consuming group has committed them (made them durable in the
    store); for ``kafka://``, once the broker acknowledged them with acks=all.
    """

    async def start(self) -> None:
        """Connect."""
        ...

    async def close(self) -> None:
        """Disconnect; pending publishes fail."""
        ...

    async def publish(self, topic: str, batch: Batch) -> None:
        """Append a batch of records (keyed by device id); return once durable.

        Raises:
            Overloaded: the log cannot take more now (retry later).
            BusUnavailable: the log is down; nothing was appended.
        """
        ...

    def subscribe(
        self,
        topic: str,
        group: str,
        max_records: int,
        *,
        on_assign: PartitionsHook | None = None,
        on_revoke: PartitionsHook | None = None,
    ) -> AsyncIterator[BusBatch]:
        """Batches of about ``max_records`` records (at least one published batch) for one consumer of
        ``group``; ``on_assign``/``on_revoke`` get the partitions this consumer gains or loses."""
        ...


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    """Aggregates of readings in ``[start, end)`` (or ``[start, end]`` if ``end_inclusive``)."""

    start: int
    end: int
    aggs: tuple[str, ...]
    sensors: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ()
    end_inclusive: bool = False


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """Aggregates of readings in ``[start, end)`` per sensor and time bucket.

    ``bucket`` is in microseconds; whole days are aligned to midnight in ``tz``, shorter buckets to
    the epoch (see :class:`~fleetstream.domain.buckets.Buckets`, whose time zone data every adapter
    uses, so all give the same buckets).
    """

    start: int
    end: int
    bucket: int
    aggs: tuple[str, ...]
    sensors: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ()
    tz: str = "UTC"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A device message, or part of one, that could not be ingested, kept with why.

    ``payload`` is the raw bytes as received; ``errors`` lists the rejected items
    (``{"index", "error"}``) when the payload decoded but some of its items did not
    validate (the valid ones were stored). ``id`` is given by the store.
    """

    received_at: int
    source: str
    topic: str | None
    reason: str
    payload: bytes
    errors: tuple[dict[str, Any], ...] = ()
    id: int = 0


@dataclass(slots=True)
class Derived:
    """What the processors made of a stretch of the log, stored idempotently (a replay may write it again).

    Windows replace the stored row of their key; late readings and device events already stored
    (same log position, same device sequence number) are not added twice; twins replace their row;
    alerts replace the row of their id (an acknowledgement stored since is kept).
    """

    windows: list[WindowAggregate] = field(default_factory=list)
    late: LateReadings = field(default_factory=LateReadings)
    events: list[DeviceEvent] = field(default_factory=list)
    twins: list[DeviceTwin] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.windows or len(self.late) or self.events or self.twins or self.alerts)

    def extend(self, other: Derived) -> None:
        """Add ``other``'s records after these (a later window version replaces an earlier one)."""
        self.windows += other.windows
        self.late.extend(other.late)
        self.events += other.events
        self.twins += other.twins
        self.alerts += other.alerts


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Processor state (opaque bytes) and the log position it reflects: replay starts after it."""

    position: int
    state: bytes
    written_at: int = 0


@dataclass(frozen=True, slots=True)
class WindowQuery:
    """Stored windows of one size whose start is in ``[start, end)``; ``device_id`` ``*`` is the fleet."""

    size_us: int
    start: int
    end: int
    sensors: tuple[str, ...] = ()
    device_id: str = "*"
    limit: int = 10_000


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Device events of one device, oldest first: event time in ``[start, end)``, after ``after_seq``."""

    device_id: str
    start: int | None = None
    end: int | None = None
    types: tuple[str, ...] = ()
    after_seq: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Stored alerts, newest opened first: ``opened_at`` in ``[start, end)``, filtered, one page."""

    state: str | None = None
    device_id: str | None = None
    rule_id: str | None = None
    start: int | None = None
    end: int | None = None
    limit: int = 100
    offset: int = 0


class Store(Protocol):
    """Durable storage of readings and device events, and the queries over them."""

    async def start(self) -> None:
        """Open (creating the schema when needed)."""
        ...

    async def close(self) -> None:
        """Flush and close."""
        ...

    async def write(self, batch: Batch) -> None:
        """Store a batch (its readings and events, with their ``seq``) in one durable transaction."""
        ...

    async def stored_keys(self, items: Sequence[tuple[DedupKey, int]]) -> set[DedupKey]:
        """Which of these (dedup key, event time) are already stored."""
        ...

    async def recent_keys(self, since: int) -> list[tuple[DedupKey, int]]:
        """(dedup key, event time) of everything stored with event time >= ``since``."""
        ...

    async def log_position(self) -> tuple[int, int | None]:
        """The last ingest sequence number stored and the newest event time (None when empty)."""
        ...

    async def query_metrics(self, query: MetricsQuery) -> dict[str, dict[str, Any]]:
        """sensor → aggregate name → value, for every sensor with data (or asked for)."""
        ...

    async def query_series(self, query: SeriesQuery) -> dict[str, list[dict[str, Any]]]:
        """sensor → one ``{"t": bucket start (µs), "<agg>": value, ...}`` per bucket holding data,
        in time order, for every sensor with data (a sensor asked for without data: ``[]``)."""
        ...

    async def sensors(self) -> set[str]:
        """Every sensor name stored."""
        ...

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Store dead letters in one durable transaction (their ``id`` is ignored and assigned)."""
        ...

    async def dead_letters(self, source: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` dead letters (of ``source`` only, when given), newest first."""
        ...

    # -- derived state (windows, device events, twins, checkpoints) -------------

    async def write_derived(self, derived: Derived, checkpoint: Checkpoint | None = None) -> None:
        """Store derived records (and the checkpoint they complete) in one durable transaction."""
        ...

    async def checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint, if any."""
        ...

    async def replay(self, after: int, max_records: int) -> Batch:
        """Stored records with log position > ``after``, in log order, about ``max_records`` of them.

        Rows of one message stay together; an empty batch means the end of the log.
        """
        ...

    async def load_twins(self, device_ids: Collection[str]) -> list[DeviceTwin]:
        """The stored twins of these devices (those that have one)."""
        ...

    async def list_twins(
        self, device_type: str | None, status: str | None, limit: int, offset: int
    ) -> tuple[int, list[DeviceTwin]]:
        """How many stored twins match, and one page of them ordered by device id."""
        ...

    async def query_windows(self, query: WindowQuery) -> list[WindowAggregate]:
        """Stored windows (their newest version), ordered by start then sensor."""
        ...

    async def device_events(self, query: EventQuery) -> list[DeviceEvent]:
        """A device's stored events, by sequence number."""
        ...

    async def device_rows(self, device_id: str, until: int) -> Batch:
        """One device's stored readings and reading-less messages up to event time ``until``, in log order."""
        ...

    async def late_counts(self) -> dict[str, int]:
        """sensor → readings stored as late (beyond the allowed lateness of the smallest window)."""
        ...

    async def save_model_round(self, model_round: ModelRound) -> None:
        """Store one federated training round (replacing a stored round of the same number)."""
        ...

    async def list_model_rounds(self) -> list[ModelRound]:
        """Every stored training round, oldest first."""
        ...

    # -- alerts, rules and zones -------------------------------------------------

    async def query_alerts(self, query: AlertQuery) -> tuple[int, list[Alert]]:
        """How many stored alerts match, and one page of them (newest opened first, then by id)."""
        ...

    async def get_alert(self, alert_id: str) -> Alert | None:
        """One stored alert."""
        ...

    async def definitions(self, kind: str) -> dict[str, dict[str, Any]]:
        """The stored definitions of ``kind`` (``rules`` or ``zones``), by id."""
        ...

    async def put_definition(self, kind: str, def_id: str, definition: dict[str, Any]) -> None:
        """Store (create or replace) one definition, durably."""
        ...

    async def delete_definition(self, kind: str, def_id: str) -> bool:
        """Remove one definition; whether it existed."""
        ...


class Source(Protocol):
    """A device-side input beside HTTP (an MQTT subscription, later a Kafka raw topic).

    It feeds the gateway, so its readings take the same path as HTTP ones, and it
    acknowledges to its sender only what is durable. ``start`` returns once it
    is taking messages (or keeps trying in the background); ``stop`` finishes the
    messages in hand and may not block for long.
    """

    name: str

    async def start(self) -> None:
        """Connect and start taking messages."""
        ...

    async def stop(self) -> None:
        """Stop taking messages, finish those in hand, disconnect."""
        ...

    def status(self) -> dict[str, Any]:
        """Live state and counters, as JSON (for ``/readyz``)."""
        ...

    def metrics(self) -> dict[str, tuple[str, str, float]]:
        """Prometheus samples: name → (``counter`` or ``gauge``, help text, value)."""
        ...
