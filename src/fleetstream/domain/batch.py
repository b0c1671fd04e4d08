"""Device messages as columns: the unit the gateway publishes and the processors consume.

One request body becomes one :class:`Batch`; the engine takes several at once
(the group commit) and :func:`concat` joins them. Every processor works on
whole columns (lists, and numpy arrays where it aggregates), so the per-reading
cost on the hot path is a few list and set operations in C rather than a
Python object and a method call per reading (DESIGN.md §10: columnar is about
2.5 times faster per process).

A row is one reading. Messages that carry no reading (a ``startup`` event)
travel beside the rows as :class:`~fleetstream.domain.records.DeviceMessage`
objects in ``events``. Rows of one message are adjacent and share ``msg``, a
number unique in the process, so :meth:`Batch.messages` can rebuild the
messages for the few consumers that want them whole (live streams).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from fleetstream.domain.records import DedupKey, DeviceMessage, Reading


class _Numbers:
    """Message numbers, unique in the process (the gateway and the engine run on one event loop)."""

    next = 0

    @classmethod
    def take(cls, n: int) -> range:
        first = cls.next
        cls.next += n
        return range(first, first + n)


def message_numbers(n: int) -> range:
    """``n`` message numbers not given out before in this process."""
    return _Numbers.take(n)


@dataclass(slots=True, eq=False)
class Batch:
    """Readings of many messages, one list per field (all the same length), plus reading-less events.

    ``seq`` (the position of each row in the durable log) is filled by the engine
    when the batch is made durable; it is empty before.

    Example:
        >>> reading = Reading("d1", 5, "t", 1.0)
        >>> b = Batch.from_messages([DeviceMessage("d1", 5, "telemetry", "Sensor", [reading])])
        >>> len(b), b.device_id, b.value, b.dedup_keys()
        (1, ['d1'], [1.0], [('d1', 't', 5)])
    """

    device_id: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    sensor: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    unit: list[str | None] = field(default_factory=list)
    device_type: list[str] = field(default_factory=list)
    msg_id: list[str | None] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    msg: list[int] = field(default_factory=list)
    received_at: list[int] = field(default_factory=list)
    events: list[DeviceMessage] = field(default_factory=list)
    event_msg: list[int] = field(default_factory=list)  # each event's message number
    seq: list[int] = field(default_factory=list)
    messages_count: int = 0

    def __len__(self) -> int:
        """Rows (readings); events are not counted."""
        return len(self.ts)

    @property
    def records(self) -> int:
        """Rows plus events: what the bus counts against its bounds."""
        return len(self.ts) + len(self.events)

    @classmethod
    def from_messages(cls, messages: Iterable[DeviceMessage]) -> Batch:
        """Columns of messages decoded one by one (the general decode path, tests).

        Rows take their message's ``seq`` when every message has one (stored messages read back).
        """
        out = cls()
        msgs = list(messages)
        with_seq = bool(msgs) and all(m.seq for m in msgs)
        numbers = message_numbers(len(msgs))
        for number, m in zip(numbers, msgs, strict=True):
            if not m.readings:
                out.events.append(m)
                out.event_msg.append(number)
                continue
            for r in m.readings:
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
                if with_seq:
                    out.seq.append(m.seq)
        out.messages_count = len(msgs)
        return out

    def dedup_keys(self) -> list[DedupKey]:
        """One key per row: (device, sensor, msg_id if the device sent one, else event time)."""
        ids = self.msg_id
        if ids.count(None) == len(ids):
            return list(zip(self.device_id, self.sensor, self.ts, strict=True))
        idents = [t if m is None else m for m, t in zip(ids, self.ts, strict=True)]
        return list(zip(self.device_id, self.sensor, idents, strict=True))

    def take(self, rows: Sequence[int]) -> Batch:
        """A batch of the given rows (in that order) and the same events."""
        out = Batch(events=self.events, event_msg=self.event_msg)
        pick = _picker(rows)
        for name in _ROW_COLUMNS:
            setattr(out, name, pick(getattr(self, name)))
        if self.seq:
            out.seq = pick(self.seq)
        out.messages_count = len(set(out.msg)) + len(out.events)
        return out

    def messages(self, device_ids: frozenset[str] | set[str] | None = None) -> list[DeviceMessage]:
        """The messages again, in arrival order (of ``device_ids`` only, when given).

        A message's ``seq`` is the log position of its first row.
        """
        numbered: list[tuple[int, DeviceMessage]] = []
        current: DeviceMessage | None = None
        current_msg = -1
        seqs = self.seq or [0] * len(self.ts)
        for i, number in enumerate(self.msg):
            device = self.device_id[i]
            if device_ids is not None and device not in device_ids:
                continue
            reading = Reading(
                device,
                self.ts[i],
                self.sensor[i],
                self.value[i],
                self.unit[i],
                self.device_type[i],
                self.msg_id[i],
            )
            if current is not None and number == current_msg:
                current.readings.append(reading)
                continue
            current = DeviceMessage(
                device,
                self.ts[i],
                self.kind[i],
                self.device_type[i],
                [reading],
                self.msg_id[i],
                self.received_at[i],
                seqs[i],
            )
            current_msg = number
            numbered.append((number, current))
        events = [
            (number, e)
            for number, e in zip(self.event_msg, self.events, strict=True)
            if device_ids is None or e.device_id in device_ids
        ]
        if events:  # in their place among the others: message numbers follow arrival order
            numbered = sorted([*numbered, *events], key=lambda pair: pair[0])
        return [m for _, m in numbered]


def _picker(rows: Sequence[int]) -> Callable[[list[Any]], list[Any]]:
    """A function taking ``rows`` of a column, in that order (itemgetter does it in C)."""
    if not rows:
        return lambda _column: []
    if len(rows) == 1:
        only = rows[0]
        return lambda column: [column[only]]
    get = itemgetter(*rows)
    return lambda column: list(get(column))


_ROW_COLUMNS = (
    "device_id",
    "ts",
    "sensor",
    "value",
    "unit",
    "device_type",
    "msg_id",
    "kind",
    "msg",
    "received_at",
)


def concat(batches: Sequence[Batch]) -> Batch:
    """One batch of all rows and events, in order."""
    if len(batches) == 1:
        return batches[0]
    out = Batch()
    for name in _ROW_COLUMNS:
        column: list[object] = getattr(out, name)
        for b in batches:
            column += getattr(b, name)
    for b in batches:
        out.events += b.events
        out.event_msg += b.event_msg
        out.seq += b.seq
        out.messages_count += b.messages_count
    return out
