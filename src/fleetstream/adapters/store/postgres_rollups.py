"""Per-minute rollups of readings in PostgreSQL, so metric queries over long ranges read a few
thousand rows instead of millions.

``readings_1m`` holds, per sensor and epoch-aligned minute, the count, sum, minimum, maximum and
``m2`` (the sum of squared deviations from the minute's mean, which merges without the cancellation
a sum of squares suffers: Chan et al.'s pairwise update, the one PostgreSQL's own ``float8_combine``
uses). :func:`add_batch` adds a batch's readings in the transaction that copies them into
``readings``, so the rollup holds exactly what ``readings`` holds, whoever writes (the embedded
engine's group commit and the cluster workers share :func:`~.postgres.write_batch`); a reading
written twice would be counted twice by the raw rows as well. Nothing deletes readings; a retention
that does must delete the rollup's minutes with them (min and max cannot be taken back).

A query over ``[start, end)`` takes its whole minutes from the rollup and the partial minutes at
both edges from raw rows. Count, minimum and maximum are exact; sum, mean and the sample standard
deviation equal the raw computation up to floating-point summation order (as DuckDB's and
PostgreSQL's raw answers already differ). Quantiles and per-device filters are not in the rollup:
those queries read raw rows (see :func:`usable`).

Each writer adds to its own rows (``shard``: its server process id modulo :data:`SHARDS`), so
cluster workers committing at the same moment do not wait on each other's row locks of the current
minute.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetstream.ports import MetricsQuery

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import Connection

MINUTE_US = 60_000_000
SHARDS = 16
STATS = frozenset({"count", "min", "max", "avg", "mean", "sum", "stddev"})
"""What a rollup answers; any other aggregate (a quantile) sends the query to raw rows."""

DDL = """
CREATE TABLE IF NOT EXISTS readings_1m (
    sensor TEXT NOT NULL,
    minute BIGINT NOT NULL,          -- start of the minute, microseconds since the epoch (UTC)
    shard SMALLINT NOT NULL,         -- the writer's own rows (see SHARDS)
    n BIGINT NOT NULL,
    total DOUBLE PRECISION NOT NULL,
    lo DOUBLE PRECISION NOT NULL,
    hi DOUBLE PRECISION NOT NULL,
    m2 DOUBLE PRECISION NOT NULL,    -- sum of squared deviations from the minute's mean
    PRIMARY KEY (sensor, minute, shard)
)
"""

# The minute of ts, floored to the epoch in integers as the series queries do (mod keeps the
# dividend's sign).
_MINUTE = f"ts - mod(mod(ts, {MINUTE_US}) + {MINUTE_US}, {MINUTE_US})"

BACKFILL = f"""INSERT INTO readings_1m (sensor, minute, shard, n, total, lo, hi, m2)
    SELECT sensor, {_MINUTE}, 0, count(*), sum(value), min(value), max(value), var_pop(value) * count(*)
    FROM readings GROUP BY 1, 2"""
"""Builds the rollup from every stored reading (on an empty ``readings_1m``)."""

# Rows in a fixed order (sensor, minute): two writers that do share a shard lock them in the same
# order, so they can wait for each other but never deadlock.
_UPSERT = f"""INSERT INTO readings_1m AS r (sensor, minute, shard, n, total, lo, hi, m2)
    SELECT s, m, pg_backend_pid() %% {SHARDS}, n, total, lo, hi, m2
    FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::float8[], %s::float8[], %s::float8[],
                %s::float8[]) AS b(s, m, n, total, lo, hi, m2)
    ORDER BY s, m
    ON CONFLICT (sensor, minute, shard) DO UPDATE SET
        n = r.n + excluded.n,
        total = r.total + excluded.total,
        lo = least(r.lo, excluded.lo),
        hi = greatest(r.hi, excluded.hi),
        m2 = r.m2 + excluded.m2 + r.n::float8 * excluded.n / (r.n + excluded.n)
             * (r.total / r.n - excluded.total / excluded.n) ^ 2"""


def minute_parts(sensor: list[str], ts: np.ndarray[Any, Any], value: list[float]) -> list[list[Any]]:
    """Columns (sensor, minute, n, total, lo, hi, m2) of the readings' per-minute aggregates."""
    names: dict[str, int] = {}
    codes = np.fromiter((names.setdefault(s, len(names)) for s in sensor), np.int64, len(sensor))
    minutes = ts - ts % MINUTE_US  # numpy's % floors: minutes before the epoch too
    order = np.lexsort((minutes, codes))
    codes, minutes = codes[order], minutes[order]
    values = np.asarray(value, np.float64)[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (codes[1:] != codes[:-1]) | (minutes[1:] != minutes[:-1])
    starts = np.flatnonzero(first)
    n = np.diff(np.append(starts, len(order)))
    total = np.add.reduceat(values, starts)
    deviation = values - np.repeat(total / n, n)
    by_code = list(names)
    return [
        [by_code[c] for c in codes[starts].tolist()],
        minutes[starts].tolist(),
        n.tolist(),
        total.tolist(),
        np.minimum.reduceat(values, starts).tolist(),
        np.maximum.reduceat(values, starts).tolist(),
        np.add.reduceat(deviation * deviation, starts).tolist(),
    ]


async def add_batch(con: Connection, sensor: list[str], ts: np.ndarray[Any, Any], value: list[float]) -> None:
    """Add readings to the rollup, in the caller's transaction (the one that stores them)."""
    await con.execute(_UPSERT, minute_parts(sensor, ts, value))


def usable(query: MetricsQuery) -> bool:
    """Whether the rollup can answer: only its statistics, every device, at least one whole minute."""
    lo, hi = whole_minutes(query.start, _end(query))
    return not query.device_ids and STATS.issuperset(query.aggs) and lo < hi


def whole_minutes(start: int, end: int) -> tuple[int, int]:
    """``[lo, hi)``: the minutes lying wholly in ``[start, end)``, as their start times."""
    return -(-start // MINUTE_US) * MINUTE_US, end // MINUTE_US * MINUTE_US


def _end(query: MetricsQuery) -> int:
    # Times are integer microseconds: [start, end] is [start, end + 1).
    return query.end + 1 if query.end_inclusive else query.end


async def query_metrics(con: Connection, query: MetricsQuery) -> dict[str, dict[str, Any]]:
    """sensor → aggregate → value, from whole minutes of the rollup and raw rows at the edges
    (only for queries :func:`usable` accepts)."""
    end = _end(query)
    lo, hi = whole_minutes(query.start, end)
    params: dict[str, Any] = {"start": query.start, "end": end, "lo": lo, "hi": hi}
    sensors = ""
    if query.sensors:
        sensors = "AND sensor = ANY(%(sensors)s)"
        params["sensors"] = [s for s in query.sensors if "\0" not in s]  # no stored text holds one
    # Each part (a stored minute, the raw edges) is a disjoint set of readings: the merged m2 is the
    # parts' m2 plus each part's n times its mean's squared distance from the overall mean.
    sql = f"""WITH parts AS (
            SELECT sensor, n, total, lo, hi, m2 FROM readings_1m
            WHERE minute >= %(lo)s AND minute < %(hi)s {sensors}
            UNION ALL
            SELECT sensor, count(*), sum(value), min(value), max(value), var_pop(value) * count(*)
            FROM readings
            WHERE ((ts >= %(start)s AND ts < %(lo)s) OR (ts >= %(hi)s AND ts < %(end)s)) {sensors}
            GROUP BY sensor),
        totals AS (
            SELECT sensor, sum(n)::int8 AS n, sum(total) AS total, min(lo) AS lo, max(hi) AS hi,
                   sum(m2) AS m2 FROM parts GROUP BY sensor)
        SELECT t.sensor, t.n, t.total, t.lo, t.hi,
               t.m2 + sum(p.n * (p.total / p.n - t.total / t.n) ^ 2)
        FROM totals t JOIN parts p USING (sensor)
        GROUP BY t.sensor, t.n, t.total, t.lo, t.hi, t.m2"""
    cur = await con.execute(sql, params)
    names = list(dict.fromkeys(query.aggs))
    result: dict[str, dict[str, Any]] = {
        s: {n: (0 if n == "count" else None) for n in names} for s in query.sensors
    }
    for sensor, n, total, low, high, m2 in await cur.fetchall():
        stats = _stats(int(n), total, low, high, m2)
        result[sensor] = {name: stats[name] for name in names}
    return dict(sorted(result.items()))


def _stats(n: int, total: float, low: float, high: float, m2: float) -> dict[str, Any]:
    mean = total / n
    if n < 2:
        stddev = None
    elif low == high:
        stddev = 0.0  # every value the same: exactly 0, not a rounding residue of the merge
    else:
        stddev = math.sqrt(max(m2, 0.0) / (n - 1))
    return {"count": n, "min": low, "max": high, "avg": mean, "mean": mean, "sum": total, "stddev": stddev}
