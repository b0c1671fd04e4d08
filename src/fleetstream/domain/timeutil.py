"""Conversions between integer microseconds and the text forms users send and read."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# Numeric timestamps are told apart by magnitude: below 1e11 they are seconds
# (up to the year 5138), below 1e14 milliseconds, else microseconds.
_SECONDS_BELOW = 100_000_000_000
_MILLIS_BELOW = 100_000_000_000_000


def datetime_to_us(dt: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (dt - EPOCH) // _US


# What ``datetime`` (and so RFC 3339 text) can show: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z.
# A time outside, e.g. "0001-01-01T00:00:00+05:00", is refused at the edge: it could be stored
# but never shown again.
MIN_US = datetime_to_us(datetime.min.replace(tzinfo=UTC))
MAX_US = datetime_to_us(datetime.max.replace(tzinfo=UTC))


def in_range(us: int) -> bool:
    """Whether ``us`` is between :data:`MIN_US` and :data:`MAX_US`.

    >>> in_range(0), in_range(MIN_US - 1)
    (True, False)
    """
    return MIN_US <= us <= MAX_US


def us_to_datetime(us: int) -> datetime:
    """The aware UTC datetime of a microsecond timestamp."""
    return EPOCH + timedelta(microseconds=us)


def us_to_iso(us: int) -> str:
    """RFC 3339 text with ``Z``, microseconds shown only when not zero.

    >>> us_to_iso(1_680_033_862_000_000), us_to_iso(1_680_033_862_500_000)
    ('2023-03-28T20:04:22Z', '2023-03-28T20:04:22.500000Z')
    """
    dt = us_to_datetime(us)
    text = dt.replace(tzinfo=None, microsecond=0).isoformat()  # strftime("%Y") drops the zeros of year 1
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def epoch_number_to_us(value: float) -> int:
    """Epoch seconds, milliseconds or microseconds (told apart by magnitude) to microseconds.

    >>> epoch_number_to_us(1680033862), epoch_number_to_us(1680033862000)
    (1680033862000000, 1680033862000000)
    """
    magnitude = abs(value)
    if magnitude < _SECONDS_BELOW:
        return round(value * 1_000_000)
    if magnitude < _MILLIS_BELOW:
        return round(value * 1_000)
    return round(value)


def parse_time(text: str) -> int:
    """RFC 3339 (offset or ``Z`` required) or ``YYYY-MM-DD HH:MM:SS`` taken as UTC, to microseconds.

    Raises:
        ValueError: with a message fit to show a user.

    >>> parse_time("2023-03-28 20:04:22") == parse_time("2023-03-28T20:04:22Z")
    True
    """
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        msg = f'expected RFC 3339 (e.g. "2023-03-28T20:04:22Z") or "YYYY-MM-DD HH:MM:SS", got "{text}"'
        raise ValueError(msg) from None
    if dt.tzinfo is None:
        if "T" in text or "t" in text:
            msg = f'"{text}" has no UTC offset: add "Z" or "+00:00"'
            raise ValueError(msg)
        dt = dt.replace(tzinfo=UTC)
    us = datetime_to_us(dt)
    if not in_range(us):
        msg = f'"{text}" is outside 0001-01-01 to 9999-12-31 UTC'
        raise ValueError(msg)
    return us


_DURATION_UNITS = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*")


def parse_duration(text: str) -> int:
    """A duration such as ``500ms``, ``10s``, ``1m``, ``2h``, ``1d`` (plain numbers: seconds), in µs.

    Raises:
        ValueError: with a message fit to show a user.

    >>> parse_duration("10s"), parse_duration("1m"), parse_duration("1.5"), parse_duration("250ms")
    (10000000, 60000000, 1500000, 250000)
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        msg = f'expected a duration such as "500ms", "10s", "1m", "1h" or "1d", got "{text}"'
        raise ValueError(msg)
    number, unit = match.groups()
    return round(float(number) * _DURATION_UNITS[unit or "s"])


def format_duration(us: int) -> str:
    """The shortest exact text of a duration (``10s``, ``1m``, ``1500ms``).

    >>> format_duration(60_000_000), format_duration(10_000_000), format_duration(1_500_000)
    ('1m', '10s', '1500ms')
    """
    for unit in ("d", "h", "m", "s", "ms"):
        size = _DURATION_UNITS[unit]
        if us >= size and us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"
