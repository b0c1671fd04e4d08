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

from collections import defaultdict
from collections.abc import Iterator, Sequence

import msgspec

from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.records import DeviceMessage

_Event = tuple[int, str, str, str | None, int, int]  # ts, kind, device_type, msg_id, received_at, seq


class _Slice(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
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


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Slice)


class UndecodableMessage(ValueError):
    """Bytes on the bus topic that are not a batch slice (written by something else)."""


def split_by_device(batch: Batch) -> Iterator[tuple[str, bytes]]:
    """(device id, encoded slice) for every device of ``batch``, in order of first appearance."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, device in enumerate(batch.device_id):
        rows[device].append(i)
    events: dict[str, list[int]] = defaultdict(list)
    for i, event in enumerate(batch.events):
        events[event.device_id].append(i)
        rows.setdefault(event.device_id, [])
    for device, picked in rows.items():
        yield device, encode_slice(batch, device, picked, events.get(device, []))


def encode_slice(batch: Batch, device: str, rows: Sequence[int], events: Sequence[int]) -> bytes:
    """The bytes of ``rows`` and ``events`` (indices into ``batch``), all of ``device``."""
    numbers = sorted({*(batch.msg[i] for i in rows), *(batch.event_msg[i] for i in events)})
    rank = {n: r for r, n in enumerate(numbers)}
    has_seq = len(batch.seq) == len(batch.ts) and bool(batch.ts)
    piece = _Slice(
        device_id=device,
        ts=[batch.ts[i] for i in rows],
        sensor=[batch.sensor[i] for i in rows],
        value=[batch.value[i] for i in rows],
        unit=[batch.unit[i] for i in rows],
        device_type=[batch.device_type[i] for i in rows],
        msg_id=[batch.msg_id[i] for i in rows],
        kind=[batch.kind[i] for i in rows],
        msg=[rank[batch.msg[i]] for i in rows],
        received_at=[batch.received_at[i] for i in rows],
        seq=[batch.seq[i] for i in rows] if has_seq else [],
        events=[_event(batch.events[i]) for i in events],
        event_msg=[rank[batch.event_msg[i]] for i in events],
    )
    return _encoder.encode(piece)


def _event(e: DeviceMessage) -> _Event:
    return (e.ts, e.kind, e.device_type, e.msg_id, e.received_at, e.seq)


def decode_slice(data: bytes) -> Batch:
    """A batch of one encoded slice, with message numbers fresh in this process.

    Raises:
        UndecodableMessage: the bytes are not a slice.
    """
    try:
        piece = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        msg = f"not a fleetstream batch slice: {exc}"
        raise UndecodableMessage(msg) from None
    count = 1 + max([*piece.msg, *piece.event_msg], default=-1)
    base = message_numbers(count).start
    device = piece.device_id
    return Batch(
        device_id=[device] * len(piece.ts),
        ts=piece.ts,
        sensor=piece.sensor,
        value=piece.value,
        unit=piece.unit,
        device_type=piece.device_type,
        msg_id=piece.msg_id,
        kind=piece.kind,
        msg=[base + m for m in piece.msg],
        received_at=piece.received_at,
        seq=piece.seq,
        events=[
            DeviceMessage(device, ts, kind, device_type, [], msg_id, received_at, seq)
            for ts, kind, device_type, msg_id, received_at, seq in piece.events
        ],
        event_msg=[base + m for m in piece.event_msg],
        messages_count=count,
    )
