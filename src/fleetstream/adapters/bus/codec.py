"""The bytes of a Kafka bus message: one partition's share of a :class:`~fleetstream.domain.batch.Batch`.

The publisher chooses each device's partition itself, :func:`partition_of`: the CRC-32 of the
device id's UTF-8 bytes modulo the topic's partition count. It is stable across processes,
machines and versions (``zlib.crc32`` is fixed by its definition, unlike ``hash``), so a device's
records always land in one partition, in order, whoever published them; the consumer never needs
Kafka's key partitioner (messages carry no key).

A published batch makes ONE message per partition it touches, a :class:`Pack` holding all that
partition's devices' rows and events in batch order: a request of 500 readings from 500 devices
is 8 messages on 8 partitions, not 500. Each pack is msgspec MessagePack, one array of columns
(``array_like``: no field names on the wire), which msgspec decodes in C straight into the
column lists a :class:`Batch` is made of; message numbers are renumbered with numpy, so neither
side spends a Python step per row except to look up each row's partition (a dict hit).

Message numbers (``Batch.msg``) are only unique in the process that made them, so a pack carries
them as ranks (0, 1, ... in arrival order, events among the rows) and the consumer gives them
fresh numbers of its own. A pack holds whole device messages and at most
:data:`MAX_PACK_RECORDS` records unless one message alone is bigger.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import msgspec
import numpy as np

from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.records import DeviceMessage

MAX_PACK_RECORDS = 1 << 15  # well under the 2^16 records a message may have (cluster log positions)

_Event = tuple[str, int, str, str, str | None, int, int]  # device, ts, kind, type, msg_id, received, seq
_COLUMNS = ("device_id", "ts", "sensor", "value", "unit", "device_type", "msg_id", "kind", "received_at")


class Pack(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """One partition's rows and reading-less events of a batch, columns in log order."""

    device_id: list[str]
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
        """Device messages in the pack (their numbers are 0 to this, exclusive)."""
        last_row = max(self.msg) if self.msg else -1
        last_event = max(self.event_msg) if self.event_msg else -1
        return 1 + max(last_row, last_event)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Pack)
_partitions: dict[tuple[str, int], int] = {}  # (device, partition count) -> partition


class UndecodableMessage(ValueError):
    """Bytes on the bus topic that are not a batch pack (written by something else)."""


def partition_of(device_id: str, partitions: int) -> int:
    """The partition of ``device_id`` among ``partitions``: CRC-32 of its UTF-8 bytes, modulo.

    Example:
        >>> partition_of("dev-1", 8), partition_of("dev-1", 8) == partition_of("dev-1", 8)
        (6, True)
    """
    key = (device_id, partitions)
    found = _partitions.get(key)
    if found is None:
        if len(_partitions) > 1_000_000:  # a fleet that big re-hashes now and then; memory stays bounded
            _partitions.clear()
        found = _partitions[key] = zlib.crc32(device_id.encode()) % partitions
    return found


def split_by_partition(batch: Batch, partitions: int) -> list[tuple[int, bytes]]:
    """(partition, encoded pack) for every partition ``batch`` touches, in partition order.

    Rows keep their batch order within a pack (so each device's order is kept); a partition whose
    share is over :data:`MAX_PACK_RECORDS` makes several consecutive packs.
    """
    rows_of: dict[int, list[int]] = {}
    for row, device in enumerate(batch.device_id):
        rows_of.setdefault(partition_of(device, partitions), []).append(row)
    events_of: dict[int, list[int]] = {}
    for i, event in enumerate(batch.events):
        events_of.setdefault(partition_of(event.device_id, partitions), []).append(i)
    with_seq = bool(batch.seq) and len(batch.seq) == len(batch.ts)
    out: list[tuple[int, bytes]] = []
    for partition in sorted(rows_of.keys() | events_of.keys()):
        rows, events = rows_of.get(partition, []), events_of.get(partition, [])
        for chunk_rows, chunk_events in _chunks(batch, rows, events):
            out.append((partition, _encoder.encode(_pack(batch, chunk_rows, chunk_events, with_seq))))
    return out


def _chunks(batch: Batch, rows: list[int], events: list[int]) -> list[tuple[list[int], list[int]]]:
    """``rows`` and ``events`` cut at message boundaries into pieces of at most MAX_PACK_RECORDS."""
    if len(rows) + len(events) <= MAX_PACK_RECORDS:
        return [(rows, events)]
    numbered = sorted(
        [(batch.msg[r], 0, r) for r in rows] + [(batch.event_msg[e], 1, e) for e in events],
        key=lambda item: item[0],
    )
    out: list[tuple[list[int], list[int]]] = [([], [])]
    last = None
    for number, is_event, index in numbered:
        size = len(out[-1][0]) + len(out[-1][1])
        if number != last and size >= MAX_PACK_RECORDS:
            out.append(([], []))
        out[-1][is_event].append(index)
        last = number
    return out


def _pack(batch: Batch, rows: list[int], events: list[int], with_seq: bool) -> Pack:
    if len(rows) == len(batch.ts):
        columns: list[list[Any]] = [list(getattr(batch, name)) for name in _COLUMNS]
        msg, seq = batch.msg, batch.seq if with_seq else []
    else:
        get = itemgetter(*rows) if len(rows) > 1 else None
        columns = [_take(getattr(batch, name), rows, get) for name in _COLUMNS]
        msg = _take(batch.msg, rows, get)
        seq = _take(batch.seq, rows, get) if with_seq else []
    event_msg = [batch.event_msg[i] for i in events]
    row_ranks, event_ranks = _ranks(msg, event_msg)
    device_id, ts, sensor, value, unit, device_type, msg_id, kind, received_at = columns
    return Pack(
        device_id,
        ts,
        sensor,
        value,
        unit,
        device_type,
        msg_id,
        kind,
        row_ranks,
        received_at,
        list(seq),
        [_event(batch.events[i]) for i in events],
        event_ranks,
    )


def _take(column: list[Any], rows: list[int], get: itemgetter[Any] | None) -> list[Any]:
    if get is None:
        return [column[rows[0]]] if rows else []
    return list(get(column))


def _ranks(msg: Sequence[int], event_msg: Sequence[int]) -> tuple[list[int], list[int]]:
    """Message numbers of this process → 0, 1, ... in their order (rows of a message are adjacent)."""
    if not msg and not event_msg:
        return [], []
    numbers = np.fromiter((*msg, *event_msg), dtype=np.int64, count=len(msg) + len(event_msg))
    _, ranks = np.unique(numbers, return_inverse=True)
    listed: list[int] = ranks.tolist()
    return listed[: len(msg)], listed[len(msg) :]


def _event(e: DeviceMessage) -> _Event:
    return (e.device_id, e.ts, e.kind, e.device_type, e.msg_id, e.received_at, e.seq)


def read_pack(data: bytes) -> Pack:
    """The decoded columns of one message (joined into a batch by :func:`join_packs`).

    Raises:
        UndecodableMessage: the bytes are not a pack.
    """
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        msg = f"not a fleetstream batch pack: {exc}"
        raise UndecodableMessage(msg) from None


def join_packs(pieces: Sequence[Pack]) -> Batch:
    """One batch of packs, in order, with message numbers fresh in this process.

    Built column by column: a list extension per column and pack, and the renumbering of each
    pack's message ranks in numpy, so joining costs no Python step per row.
    """
    out = Batch(messages_count=sum(p.messages for p in pieces))
    number = message_numbers(out.messages_count).start
    row_numbers: list[np.ndarray[Any, Any]] = []
    event_numbers: list[np.ndarray[Any, Any]] = []
    for p in pieces:
        if p.ts:
            for name in _COLUMNS:
                column: list[Any] = getattr(out, name)
                column += getattr(p, name)
            out.seq += p.seq
            row_numbers.append(np.asarray(p.msg, dtype=np.int64) + number)
        if p.events:
            out.events += [
                DeviceMessage(device, ts, kind, device_type, [], msg_id, received_at, seq)
                for device, ts, kind, device_type, msg_id, received_at, seq in p.events
            ]
            event_numbers.append(np.asarray(p.event_msg, dtype=np.int64) + number)
        number += p.messages
    if row_numbers:
        out.msg = np.concatenate(row_numbers).tolist()
    if event_numbers:
        out.event_msg = np.concatenate(event_numbers).tolist()
    return out


def decode_pack(data: bytes) -> Batch:
    """A batch of one encoded pack (see :func:`read_pack`, :func:`join_packs`)."""
    return join_packs([read_pack(data)])
