"""A fast path for the most common bodies: batches of canonical and typed messages.

msgspec decodes and validates such a batch into Structs in C (types, the id
rule, lengths, RFC 3339 times), about four times faster than the general
per-item path. It answers ``None`` whenever anything is off (another format,
an unknown key, a null, a bad value, a time without offset or too far ahead):
the caller then runs the general path, which finds and words each item's
error. So both paths accept exactly the same batches and build the same
messages (a property test holds them to it).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ingest.devicetypes import KNOWN_UNITS, by_tag
from fleetstream.ingest.formats import DecodeContext

DeviceId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:@!\-]{1,128}$")] | int
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


class _NotFast(Exception):
    """Leave this body to the general path."""


def decode_fast(body: bytes, ctx: DecodeContext, max_items: int) -> list[DeviceMessage] | None:
    """The messages of a JSON body of canonical and typed messages only, or ``None``."""
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


def _time(item: _Plain, ctx: DecodeContext) -> int:
    raw = item.timestamp if item.timestamp is not UNSET else item.ts
    if isinstance(raw, datetime):
        if raw.tzinfo is None:
            raise _NotFast
        seconds = raw.timestamp()
        if seconds < 0:  # int() rounds toward zero, a second late before 1970: the general path is exact
            raise _NotFast
        us = int(seconds) * 1_000_000 + raw.microsecond
    elif isinstance(raw, int | float) and math.isfinite(raw) and raw >= 0:
        magnitude = abs(raw)
        us = round(
            raw * 1_000_000
            if magnitude < _SECONDS_BELOW
            else raw * 1_000
            if magnitude < _MILLIS_BELOW
            else raw
        )
    else:
        raise _NotFast
    if us - ctx.received_at > ctx.max_future_us:
        raise _NotFast
    return us


def _msg_id(item: _Plain) -> str | None:
    if item.msg_id is not UNSET:
        return str(item.msg_id)
    if item.seq is not UNSET:
        return str(item.seq)
    return None


def _build(items: list[_Plain], ctx: DecodeContext) -> list[DeviceMessage]:
    # The general path's precedence: a "tag" makes a typed message, else "sensor"/"value" canonical.
    out = []
    received = ctx.received_at
    units = KNOWN_UNITS
    for item in items:
        ts = _time(item, ctx)
        device = item.device_id if isinstance(item.device_id, str) else str(item.device_id)
        msg_id = _msg_id(item)
        if item.tag is not UNSET:
            dtype = by_tag(item.tag)
            if dtype is None or not dtype.sensors:
                raise _NotFast
            readings = []
            for sensor, unit in dtype.sensors.items():
                value = getattr(item, sensor, UNSET)
                if value is UNSET:
                    continue
                if not math.isfinite(value):
                    raise _NotFast
                readings.append(Reading(device, ts, sensor, value, unit, dtype.name, msg_id))
            if not readings:
                raise _NotFast
            out.append(DeviceMessage(device, ts, "telemetry", dtype.name, readings, msg_id, received))
            continue
        name, number = item.sensor, item.value
        if isinstance(name, UnsetType) or isinstance(number, UnsetType) or not math.isfinite(number):
            raise _NotFast
        given_unit = item.unit if item.unit is not UNSET else units.get(name)
        type_name = item.device_type if item.device_type is not UNSET else "Sensor"
        reading = Reading(device, ts, name, number, given_unit, type_name, msg_id)
        out.append(DeviceMessage(device, ts, "telemetry", type_name, [reading], msg_id, received))
    return out
