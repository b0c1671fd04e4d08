"""The bytes of a Kafka bus message: one device's slice of a :class:`~fleetstream.domain.batch.Batch`.

A published batch is split by device id, the message key, so one device's
records land in one partition in order. Each slice is encoded with msgspec's
MessagePack as one array of columns (``array_like``: no field names on the
wire). MessagePack rather than Arrow IPC because slices are small (a device
sends a few readings per request): an Arrow IPC stream repeats its schema in
every message, several hundred bytes, more than the data itself, while
MessagePack costs a byte or two of framing per value and encodes or decodes a
slice in about a microsecond per row, with ``None`` in the optional columns for
free.

Message numbers (``Batch.msg``) are only unique in the process that made them,
so a slice carries them as ranks (0, 1, ... in arrival order, events among the
rows) and the consumer gives them fresh numbers of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgspec

from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.records import DeviceMessage

_Event = tuple[int, str, str, str | None, int, int]  # ts, kind, device_type, msg_id, received_at, seq


class Slice(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """One device's rows and reading-less events, columns in log order."""

    device_id: str
    ts: list[int]
    sensor: list[str]
    value: list[float]
    unit: list[str | None]
    device_type: list[str]
    msg_id: list[str | None]
    kind: list[str]
    msg: list[int]
    received_at: list[int]
    seq: list[int]
    events: list[_Event]
    event_msg: list[int]

    @property
    def records(self) -> int:
        """Rows plus events, as :attr:`Batch.records` counts them."""
        return len(self.ts) + len(self.events)

    @property
    def messages(self) -> int:
        """Device messages in the slice (their numbers are 0 to this, exclusive)."""
        last_row = self.msg[-1] if self.msg else -1
        last_event = self.event_msg[-1] if self.event_msg else -1
        return 1 + max(last_row, last_event)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Slice)


class UndecodableMessage(ValueError):
    """Bytes on the bus topic that are not a batch slice (written by something else)."""


def split_by_device(batch: Batch) -> Iterator[tuple[str, bytes]]:
    """(device id, encoded slice) for every device of ``batch``, in order of first appearance.

    One pass over the rows appends each to its device's columns (the common batch holds one
    reading from each of many devices, so the cost per message is what counts).
    """
    slices: dict[str, Slice] = {}
    for device, ts, sensor, value, unit, device_type, msg_id, kind, msg, received_at in zip(
        batch.device_id,
        batch.ts,
        batch.sensor,
        batch.value,
        batch.unit,
        batch.device_type,
        batch.msg_id,
        batch.kind,
        batch.msg,
        batch.received_at,
        strict=True,
    ):
        p = slices.get(device)
        if p is None:
            p = slices[device] = _empty(device)
        p.ts.append(ts)
        p.sensor.append(sensor)
        p.value.append(value)
        p.unit.append(unit)
        p.device_type.append(device_type)
        p.msg_id.append(msg_id)
        p.kind.append(kind)
        p.msg.append(msg)
        p.received_at.append(received_at)
    if batch.seq and len(batch.seq) == len(batch.ts):
        for device, seq in zip(batch.device_id, batch.seq, strict=True):
            slices[device].seq.append(seq)
    for event, number in zip(batch.events, batch.event_msg, strict=True):
        p = slices.get(event.device_id)
        if p is None:
            p = slices[event.device_id] = _empty(event.device_id)
        p.events.append(_event(event))
        p.event_msg.append(number)
    for device, p in slices.items():
        _rank(p)
        yield device, _encoder.encode(p)


def _empty(device: str) -> Slice:
    return Slice(device, [], [], [], [], [], [], [], [], [], [], [], [])


def _rank(p: Slice) -> None:
    """Message numbers of this process → 0, 1, ... in their order (rows of a message are adjacent)."""
    if not p.event_msg:
        if len(p.msg) == 1:
            p.msg = [0]
            return
        ranks, rank, last = [], -1, None
        for m in p.msg:
            if m != last:
                rank, last = rank + 1, m
            ranks.append(rank)
        p.msg = ranks
        return
    order = {n: r for r, n in enumerate(sorted({*p.msg, *p.event_msg}))}
    p.msg = [order[m] for m in p.msg]
    p.event_msg = [order[m] for m in p.event_msg]


def _event(e: DeviceMessage) -> _Event:
    return (e.ts, e.kind, e.device_type, e.msg_id, e.received_at, e.seq)


def read_slice(data: bytes) -> Slice:
    """The decoded columns of one message (joined into a batch by :func:`join_slices`).

    Raises:
        UndecodableMessage: the bytes are not a slice.
    """
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        msg = f"not a fleetstream batch slice: {exc}"
        raise UndecodableMessage(msg) from None


def join_slices(pieces: Sequence[Slice]) -> Batch:
    """One batch of slices, in order, with message numbers fresh in this process.

    Built column by column straight from the decoded slices: a batch of a thousand one-reading
    messages costs a list extension per column and slice, not a Batch object per message.
    """
    out = Batch(messages_count=sum(p.messages for p in pieces))
    number = message_numbers(out.messages_count).start
    for p in pieces:
        rows = len(p.ts)
        if rows:
            out.device_id += [p.device_id] * rows
            out.ts += p.ts
            out.sensor += p.sensor
            out.value += p.value
            out.unit += p.unit
            out.device_type += p.device_type
            out.msg_id += p.msg_id
            out.kind += p.kind
            out.msg += [number + m for m in p.msg]
            out.received_at += p.received_at
            out.seq += p.seq
        if p.events:
            device = p.device_id
            out.events += [
                DeviceMessage(device, ts, kind, device_type, [], msg_id, received_at, seq)
                for ts, kind, device_type, msg_id, received_at, seq in p.events
            ]
            out.event_msg += [number + m for m in p.event_msg]
        number += p.messages
    return out


def decode_slice(data: bytes) -> Batch:
    """A batch of one encoded slice (see :func:`read_slice`, :func:`join_slices`)."""
    return join_slices([read_slice(data)])
