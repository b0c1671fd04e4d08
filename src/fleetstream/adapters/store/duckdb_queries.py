"""The queries over stored readings: per-sensor aggregates over a time range, time-bucketed
series, and the sensors seen.

Functions over a reader's cursor, called by :class:`~fleetstream.adapters.store.duckdb.DuckDBStore`
on its reader threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from fleetstream.domain.buckets import Buckets
from fleetstream.ports import MetricsQuery, SeriesQuery

AGGREGATES: dict[str, str] = {
    "count": "count(value)",
    "min": "min(value)",
    "max": "max(value)",
    "avg": "avg(value)",
    "mean": "avg(value)",
    "sum": "sum(value)",
    "stddev": "stddev_samp(value)",
    "p50": "quantile_cont(value, 0.5)",
    "p95": "quantile_cont(value, 0.95)",
    "p99": "quantile_cont(value, 0.99)",
}


def query_metrics(cursor: duckdb.DuckDBPyConnection, query: MetricsQuery) -> dict[str, dict[str, Any]]:
    """Each sensor's aggregates over the query's range (every sensor asked for, by name)."""
    names = list(dict.fromkeys(query.aggs))
    select = ", ".join(AGGREGATES[name] for name in names)
    where, params = _filters(
        query.start, query.end, query.sensors, query.device_ids, end_inclusive=query.end_inclusive
    )
    sql = f"SELECT sensor, {select} FROM readings WHERE {where} GROUP BY sensor"
    rows = cursor.execute(sql, params).fetchall()
    result: dict[str, dict[str, Any]] = {s: _empty(names) for s in query.sensors}
    for sensor, *values in rows:
        result[sensor] = dict(zip(names, values, strict=True))
    return dict(sorted(result.items()))


def query_series(cursor: duckdb.DuckDBPyConnection, query: SeriesQuery) -> dict[str, list[dict[str, Any]]]:
    """Each sensor's aggregates per time bucket (``t``, its start in epoch microseconds), by name."""
    names = list(dict.fromkeys(query.aggs))
    select = ", ".join(AGGREGATES[name] for name in names)
    where, params = _filters(query.start, query.end, query.sensors, query.device_ids)
    rows_sql = f"SELECT sensor, ts, value FROM readings WHERE {where}"
    buckets = Buckets(query.bucket, query.tz)
    if buckets.by_day:
        # Day starts come from the domain's time zone data, not DuckDB's own (ICU's differs from
        # the system's, e.g. where clocks go back at midnight): every store agrees. At most one
        # edge per bucket of the range, so the as-of join stays small.
        edges = buckets.starts(query.start, query.end)
        sql = f"""WITH edges AS (SELECT make_timestamp(unnest(?::BIGINT[])) AS start)
                  SELECT r.sensor, epoch_us(e.start) AS t, {select}
                  FROM ({rows_sql}) r ASOF JOIN edges e ON r.ts >= e.start
                  GROUP BY r.sensor, t ORDER BY r.sensor, t"""
        params = [edges, *params]
    else:
        width = int(buckets.width)  # inlined in the SQL: an int, nothing else
        # Floor to the epoch-aligned bucket in integers (% keeps the dividend's sign in SQL).
        sql = f"""SELECT sensor, epoch_us(ts) - ((epoch_us(ts) % {width}) + {width}) % {width} AS t,
                         {select}
                  FROM ({rows_sql}) GROUP BY sensor, t ORDER BY sensor, t"""
    result: dict[str, list[dict[str, Any]]] = {s: [] for s in query.sensors}
    for sensor, t, *values in cursor.execute(sql, params).fetchall():
        result.setdefault(sensor, []).append({"t": t, **dict(zip(names, values, strict=True))})
    return dict(sorted(result.items()))


def sensors(cursor: duckdb.DuckDBPyConnection) -> set[str]:
    """Every sensor with a stored reading."""
    return {row[0] for row in cursor.execute("SELECT DISTINCT sensor FROM readings").fetchall()}


def _filters(
    start: int, end: int, sensors: Sequence[str], device_ids: Sequence[str], *, end_inclusive: bool = False
) -> tuple[str, list[Any]]:
    # The time range first: rows are stored in time order, so it skips row groups by their min/max.
    where = [
        "ts >= make_timestamp(?)",
        "ts <= make_timestamp(?)" if end_inclusive else "ts < make_timestamp(?)",
    ]
    params: list[Any] = [start, end]
    if sensors:
        where.append(f"sensor IN ({', '.join('?' * len(sensors))})")
        params.extend(sensors)
    if device_ids:
        where.append(f"device_id IN ({', '.join('?' * len(device_ids))})")
        params.extend(device_ids)
    return " AND ".join(where), params


def _empty(names: list[str]) -> dict[str, Any]:
    return {name: (0 if name == "count" else None) for name in names}
