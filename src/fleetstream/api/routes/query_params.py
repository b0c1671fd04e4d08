"""Query-string parameters of the query routes: values, times, aggregates, bucket sizes.

Each helper reads one parameter as the routes of :mod:`~fleetstream.api.routes.query` (and the
windows, devices, alerts and live routes) take it, and raises :class:`~fleetstream.errors.InvalidInput`
(a 400) naming the parameter when it is bad.
"""

from __future__ import annotations

import re

from fleetstream.domain.buckets import MAX_BUCKETS, Buckets, format_bucket, parse_bucket, pick_bucket
from fleetstream.domain.timeutil import parse_time, us_to_iso
from fleetstream.errors import InvalidInput

AGGS = ("count", "min", "max", "avg", "mean", "sum", "stddev", "p50", "p95", "p99")
DEFAULT_AGGS = "count,min,max,avg"
HOUR_US = 3_600_000_000
DEFAULT_POINTS = 500


def split_values(values: list[str] | None) -> tuple[str, ...]:
    """Repeatable and comma-separated query values, flattened, order kept, blanks dropped."""
    out: dict[str, None] = {}
    for value in values or ():
        for part in value.split(","):
            if part.strip():
                out[part.strip()] = None
    return tuple(out)


def time_param(name: str, text: str | None, default: int) -> int:
    """A query-string time, or ``default`` when absent; 400 naming the parameter when bad."""
    if text is None or not text.strip():
        return default
    try:
        return parse_time(text.strip())
    except ValueError as exc:
        msg = f"{name}: {exc}"
        raise InvalidInput(msg) from None


def agg_param(text: str) -> tuple[str, ...]:
    """The aggregates of an ``agg`` parameter; 400 listing the unknown ones."""
    aggs = split_values([text])
    unknown = [a for a in aggs if a not in AGGS]
    if unknown or not aggs:
        msg = f"agg: unknown aggregate(s) {', '.join(unknown) or '(none given)'}; expected {', '.join(AGGS)}"
        raise InvalidInput(msg)
    return aggs


def bucket_param(bucket: str | None, points: str | None, start: int, end: int, tz: str) -> int:
    """The bucket size in microseconds from ``bucket`` or ``points`` (default 500 points); 400 when
    bad, when both are given, or when ``bucket`` makes more than 10,000 buckets over the range."""
    bucket, points = (bucket or "").strip(), (points or "").strip()
    if bucket and points:
        msg = "give either bucket or points, not both"
        raise InvalidInput(msg)
    if bucket:
        try:
            width = parse_bucket(bucket)
            count = Buckets(width, tz).count(start, end)
        except ValueError as exc:
            msg = f"bucket: {exc}"
            raise InvalidInput(msg) from None
        if count > MAX_BUCKETS:
            msg = (
                f"bucket: {format_bucket(width)} makes {count:,} buckets from {us_to_iso(start)} to "
                f"{us_to_iso(end)}, more than {MAX_BUCKETS:,}: use points= or a larger bucket"
            )
            raise InvalidInput(msg)
        return width
    if points and not (re.fullmatch("[0-9]{1,9}", points) and 1 <= int(points) <= MAX_BUCKETS):
        msg = f"points: expected a whole number from 1 to {MAX_BUCKETS:,}, got '{points}'"
        raise InvalidInput(msg)
    try:
        return pick_bucket(start, end, int(points or DEFAULT_POINTS), tz)
    except ValueError as exc:
        msg = f"points: {exc}"
        raise InvalidInput(msg) from None
