"""Field checks shared by the input formats; each failure names the field and the reason."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NoReturn

import msgspec

from fleetstream.domain.records import DEVICE_ID_RULE, is_valid_device_id
from fleetstream.domain.timeutil import datetime_to_us, epoch_number_to_us, in_range
from fleetstream.errors import InvalidReading

Item = dict[str, Any]


def shown(value: Any) -> str:
    """A value as JSON-ish text for an error message, cut short."""
    text = f'"{value}"' if isinstance(value, str) else "null" if value is None else repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 60 else text[:57] + "..."


def fail(field: str, reason: str) -> NoReturn:
    """Raise the error for one field."""
    message = f"{field}: {reason}"
    raise InvalidReading(message, details={"field": field})


def device_id(item: Item, from_url: str | None = None, field: str = "device_id") -> str:
    """A device id: a string or an integer, following the id rule.

    ``from_url`` is the device named by the URL path (or MQTT topic): it fills a
    missing id, and an id in the body must equal it.
    """
    raw = item.get(field)
    if from_url is not None:
        if raw is None or str(raw) == from_url:
            return from_url
        fail(field, f"{shown(raw)} does not match the device in the URL ({from_url})")
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, int) and not isinstance(raw, bool):
        text = str(raw)
    elif raw is None:
        fail(field, "required")
    else:
        fail(field, f"expected a string or integer, got {shown(raw)}")
    if not is_valid_device_id(text):
        fail(field, f"{shown(text)} is not a valid device id ({DEVICE_ID_RULE})")
    return text


def number(field: str, raw: Any) -> float:
    """A finite number; numeric strings such as ``"79.12"`` are accepted."""
    if isinstance(raw, float):
        value = raw
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            fail(field, f"expected a finite number, got {shown(raw)}")
    else:
        fail(field, f"expected a finite number, got {shown(raw)}")
    if not math.isfinite(value):
        fail(field, f"expected a finite number, got {shown(raw)}")
    return value


def text(item: Item, field: str, *, required: bool = True) -> str | None:
    """A non-empty string field."""
    raw = item.get(field)
    if raw is None:
        if required:
            fail(field, "required")
        return None
    if not isinstance(raw, str) or not raw:
        fail(field, f"expected a non-empty string, got {shown(raw)}")
    if len(raw) > 128:
        fail(field, "longer than 128 characters")
    return raw


def msg_id(item: Item) -> str | None:
    """The optional dedup id of a message: ``msg_id`` (string or integer) or ``seq`` (integer)."""
    for field in ("msg_id", "seq"):
        raw = item.get(field)
        if raw is None:
            continue
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            fail(field, f"expected a string or integer, got {shown(raw)}")
        value = str(raw)
        if not value or len(value) > 128:
            fail(field, "expected 1 to 128 characters")
        return value
    return None


def timestamp(
    item: Item, received_at: int, max_future_us: int, fields: tuple[str, ...] = ("timestamp", "ts")
) -> int:
    """Event time: RFC 3339 text with an offset or ``Z``, or epoch seconds/milliseconds.

    A message with none of ``fields`` is an error; formats whose devices send no
    time at all call :func:`optional_timestamp` instead.
    """
    for field in fields:
        if field in item:
            return _parse_timestamp(field, item[field], received_at, max_future_us)
    fail(fields[0], 'required (RFC 3339 text such as "2023-03-28T20:04:22Z", or epoch ms)')


def _parse_timestamp(field: str, raw: Any, received_at: int, max_future_us: int) -> int:
    if isinstance(raw, str):
        try:  # msgspec's RFC 3339 parser, the one the fast path uses, so both accept the same times
            dt = msgspec.convert(raw, datetime)
        except msgspec.ValidationError:
            fail(field, f'expected RFC 3339 text such as "2023-03-28T20:04:22Z", got {shown(raw)}')
        if dt.tzinfo is None:
            fail(field, f'{shown(raw)} has no UTC offset: add "Z" or "+00:00"')
        ts = datetime_to_us(dt)
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        if not math.isfinite(raw) or raw < 0:
            fail(field, f"expected a positive epoch time, got {shown(raw)}")
        ts = epoch_number_to_us(raw)
    else:
        fail(field, f"expected RFC 3339 text or epoch milliseconds, got {shown(raw)}")
    if ts - received_at > max_future_us:
        hours, rest = divmod(max_future_us, 3_600_000_000)
        limit = f"{hours} h" if hours and not rest else f"{max_future_us / 1e6:g} s"  # not "0.0166667 h"
        fail(field, f"{shown(raw)} is more than {limit} ahead of the server clock")
    if not in_range(ts):
        fail(field, f"{shown(raw)} is outside 0001-01-01 to 9999-12-31 UTC")
    return ts
