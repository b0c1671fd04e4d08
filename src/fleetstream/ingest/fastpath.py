"""A fast path for the most common bodies: batches of canonical and typed messages.

msgspec decodes and validates such a batch into Structs in C (types, lengths,
RFC 3339 times), and the columns of a :class:`~fleetstream.domain.batch.Batch`
are built from them a column at a time where the batch allows (the id rule is
checked once per distinct id): several times faster than the general per-item
path. It answers ``None`` whenever anything is off (another format,
an unknown key, a null, a bad value, a time without offset or too far ahead):
the caller then runs the general path, which finds and words each item's
error. So both paths accept exactly the same batches and build the same
messages (a property test holds them to it).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from fleetstream.domain.batch import Batch, message_numbers
from fleetstream.domain.records import is_valid_device_id
from fleetstream.ingest.devicetypes import KNOWN_UNITS, by_tag
from fleetstream.ingest.formats import DecodeContext

# The id rule is checked on distinct ids, against a memory of ids already seen valid, not by a
# regex per item (that costs more than decoding the rest of the item).
DeviceId = str | int
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Time = datetime | int | float


class _Plain(msgspec.Struct, forbid_unknown_fields=True):
    """A canonical reading or a typed message (the keys of both; envelopes are not plain)."""

    device_id: DeviceId
    timestamp: Time | UnsetType = UNSET
    ts: Time | UnsetType = UNSET
    sensor: Text | UnsetType = UNSET
    value: float | UnsetType = UNSET
    unit: Text | UnsetType = UNSET
    device_type: Text | UnsetType = UNSET
    tag: Text | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    pressure: float | UnsetType = UNSET
    humidity: float | UnsetType = UNSET
    heart_rate: float | UnsetType = UNSET
    msg_id: Text | int | UnsetType = UNSET
    seq: int | UnsetType = UNSET


_plain = msgspec.json.Decoder(list[_Plain] | _Plain)
_SECONDS_BELOW = 100_000_000_000
_MILLIS_BELOW = 100_000_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_VALID_IDS_MAX = 500_000


_VALID_IDS: set[str] = set()  # device ids known to follow the id rule (bounded: cleared when full)


class _NotFast(Exception):
    """Leave this body to the general path."""


def decode_fast(body: bytes, ctx: DecodeContext, max_items: int) -> Batch | None:
    """The messages of a JSON body of canonical and typed messages only, as columns, or ``None``."""
    if ctx.device_id is not None:
        return None
    try:
        doc = _plain.decode(body)
    except msgspec.DecodeError:
        return None
    items = doc if isinstance(doc, list) else [doc]
    if not items or len(items) > max_items:
        return None
    try:
        return _build(items, ctx)
    except _NotFast:
        return None


def _device_ids(items: list[_Plain]) -> list[str]:
    ids: list[Any] = [item.device_id for item in items]
    if set(map(type, ids)) != {str}:
        ids = [d if isinstance(d, str) else str(d) for d in ids]
    new = set(ids).difference(_VALID_IDS)
    if new:
        if not all(map(is_valid_device_id, new)):
            raise _NotFast
        if len(_VALID_IDS) + len(new) > _VALID_IDS_MAX:
            _VALID_IDS.clear()
        _VALID_IDS.update(new)
    return ids


def _times(items: list[_Plain], ctx: DecodeContext) -> list[int]:
    raw: list[Any] = [item.timestamp for item in items]
    if UNSET in raw:
        raw = [t if t is not UNSET else item.ts for t, item in zip(raw, items, strict=True)]
    if set(map(type, raw)) == {datetime}:
        try:
            us = [(t - _EPOCH) // _MICROSECOND for t in raw]
        except TypeError:  # a time without offset: the general path words the error
            raise _NotFast from None
    else:
        us = [_time(t) for t in raw]
    # Before 1970 the general path's rounding rule applies: leave those (rare) bodies to it.
    if min(us) < 0 or max(us) - ctx.received_at > ctx.max_future_us:
        raise _NotFast
    return us


def _time(raw: Any) -> int:
    if isinstance(raw, datetime):
        if raw.tzinfo is None:
            raise _NotFast
        return (raw - _EPOCH) // _MICROSECOND
    if isinstance(raw, int | float) and math.isfinite(raw) and raw >= 0:
        magnitude = abs(raw)
        return round(
            raw * 1_000_000
            if magnitude < _SECONDS_BELOW
            else raw * 1_000
            if magnitude < _MILLIS_BELOW
            else raw
        )
    raise _NotFast


def _msg_ids(items: list[_Plain]) -> list[str | None]:
    ids: list[Any] = [item.msg_id for item in items]
    seqs: list[Any] = [item.seq for item in items]
    if ids.count(UNSET) == len(ids) and seqs.count(UNSET) == len(seqs):
        return [None] * len(items)
    return [
        str(m) if m is not UNSET else str(q) if q is not UNSET else None
        for m, q in zip(ids, seqs, strict=True)
    ]


def _build(items: list[_Plain], ctx: DecodeContext) -> Batch:
    # The general path's precedence: a "tag" makes a typed message, else "sensor"/"value" canonical.
    n = len(items)
    devices = _device_ids(items)
    times = _times(items, ctx)
    msg_ids = _msg_ids(items)
    numbers = message_numbers(n)
    tags: list[Any] = [item.tag for item in items]
    if tags.count(UNSET) == n:  # canonical readings only: one reading per message, column by column
        sensors: list[Any] = [item.sensor for item in items]
        values: list[Any] = [item.value for item in items]
        if UNSET in sensors or UNSET in values or not all(map(math.isfinite, values)):
            raise _NotFast
        units: list[Any] = [item.unit for item in items]
        if units.count(UNSET) == n:
            units = list(map(KNOWN_UNITS.get, sensors))
        elif UNSET in units:
            units = [KNOWN_UNITS.get(s) if u is UNSET else u for u, s in zip(units, sensors, strict=True)]
        types: list[Any] = [item.device_type for item in items]
        if types.count(UNSET) == n:
            types = ["Sensor"] * n
        elif UNSET in types:
            types = ["Sensor" if t is UNSET else t for t in types]
        return Batch(
            devices,
            times,
            sensors,
            values,
            units,
            types,
            msg_ids,
            ["telemetry"] * n,
            list(numbers),
            [ctx.received_at] * n,
            messages_count=n,
        )
    out = Batch(messages_count=n)
    device_col, ts_col, sensor_col, value_col = out.device_id, out.ts, out.sensor, out.value
    unit_col, type_col, id_col, msg_col = out.unit, out.device_type, out.msg_id, out.msg
    isfinite = math.isfinite
    for i, item in enumerate(items):
        tag = tags[i]
        if tag is not UNSET:
            dtype = by_tag(tag)
            if dtype is None or not dtype.sensors:
                raise _NotFast
            found = False
            for sensor, unit in dtype.sensors.items():
                value = getattr(item, sensor, UNSET)
                if value is UNSET:
                    continue
                if not isfinite(value):
                    raise _NotFast
                found = True
                sensor_col.append(sensor)
                value_col.append(value)
                unit_col.append(unit)
                type_col.append(dtype.name)
                device_col.append(devices[i])
                ts_col.append(times[i])
                id_col.append(msg_ids[i])
                msg_col.append(numbers[i])
            if not found:
                raise _NotFast
            continue
        name, number = item.sensor, item.value
        if isinstance(name, UnsetType) or isinstance(number, UnsetType) or not isfinite(number):
            raise _NotFast
        given_unit, given_type = item.unit, item.device_type
        sensor_col.append(name)
        value_col.append(number)
        unit_col.append(KNOWN_UNITS.get(name) if isinstance(given_unit, UnsetType) else given_unit)
        type_col.append("Sensor" if isinstance(given_type, UnsetType) else given_type)
        device_col.append(devices[i])
        ts_col.append(times[i])
        id_col.append(msg_ids[i])
        msg_col.append(numbers[i])
    rows = len(ts_col)
    out.kind = ["telemetry"] * rows
    out.received_at = [ctx.received_at] * rows
    return out
