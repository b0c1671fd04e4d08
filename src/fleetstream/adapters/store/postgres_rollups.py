"""Per-minute and per-hour rollups of readings in PostgreSQL, so metric queries over long ranges
read a few hundred rows instead of millions.

``readings_1m`` and ``readings_1h`` hold, per sensor and epoch-aligned minute (hour), the count, sum,
minimum, maximum and ``m2`` (the sum of squared deviations from the interval's mean, which merges
without the cancellation a sum of squares suffers: Chan et al.'s pairwise update, the one
PostgreSQL's own ``float8_combine`` uses). :func:`add_batch` adds a batch's readings to both in the
transaction that copies them into ``readings``, so the rollups hold exactly what ``readings`` holds,
whoever writes (the embedded engine's group commit and the cluster workers share
:func:`~.postgres.write_batch`); a reading written twice would be counted twice by the raw rows as
well. Nothing deletes readings; a retention that does must delete the rollups' intervals with them
(min and max cannot be taken back).

A query over ``[start, end)`` takes its whole hours from ``readings_1h``, the whole minutes around
them from ``readings_1m`` and the partial minutes at both edges from raw rows. Count, minimum and
maximum are exact; sum, mean and the sample standard deviation equal the raw computation up to
floating-point summation order (as DuckDB's and PostgreSQL's raw answers already differ).
Quantiles and per-device filters are not in the rollups: those queries read raw rows (see
:func:`usable`).

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
HOUR_US = 60 * MINUTE_US
SHARDS = 16
STATS = frozenset({"count", "min", "max", "avg", "mean", "sum", "stddev"})
"""What a rollup answers; any other aggregate (a quantile) sends the query to raw rows."""
LEVELS = (("readings_1m", "minute", MINUTE_US), ("readings_1h", "hour", HOUR_US))
"""The rollup tables: (table, its time column, the width of a row's interval in microseconds)."""


def _ddl(table: str, column: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    sensor TEXT NOT NULL,
    {column} BIGINT NOT NULL,        -- its start, microseconds since the epoch (UTC)
    shard SMALLINT NOT NULL,         -- the writer's own rows (see SHARDS)
    n BIGINT NOT NULL,
    total DOUBLE PRECISION NOT NULL,
    lo DOUBLE PRECISION NOT NULL,
    hi DOUBLE PRECISION NOT NULL,
    m2 DOUBLE PRECISION NOT NULL,    -- sum of squared deviations from the interval's mean
    PRIMARY KEY (sensor, {column}, shard)
);"""


DDL = "".join(_ddl(table, column) for table, column, _ in LEVELS)

# The interval of ts, floored to the epoch in integers as the series queries do (mod keeps the
# dividend's sign).
BACKFILL = {
    table: f"""INSERT INTO {table} (sensor, {column}, shard, n, total, lo, hi, m2)
    SELECT sensor, ts - mod(mod(ts, {width}) + {width}, {width}), 0, count(*), sum(value), min(value),
           max(value), var_pop(value) * count(*)
    FROM readings GROUP BY 1, 2"""
    for table, column, width in LEVELS
}
"""table → the statement that builds it from every stored reading (on an empty table)."""


def _upsert(table: str, column: str) -> str:
    # Rows in a fixed order (sensor, start): two writers that do share a shard lock them in the
    # same order, so they can wait for each other but never deadlock.
    return f"""INSERT INTO {table} AS r (sensor, {column}, shard, n, total, lo, hi, m2)
    SELECT s, t, pg_backend_pid() %% {SHARDS}, n, total, lo, hi, m2
    FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::float8[], %s::float8[], %s::float8[],
                %s::float8[]) AS b(s, t, n, total, lo, hi, m2)
    ORDER BY s, t
    ON CONFLICT (sensor, {column}, shard) DO UPDATE SET
        n = r.n + excluded.n,
        total = r.total + excluded.total,
        lo = least(r.lo, excluded.lo),
        hi = greatest(r.hi, excluded.hi),
        m2 = r.m2 + excluded.m2 + r.n::float8 * excluded.n / (r.n + excluded.n)
             * (r.total / r.n - excluded.total / excluded.n) ^ 2"""


# Both levels in one statement (one round trip): the minutes' upsert as a data-modifying WITH.
UPSERT = f"WITH minutes AS ({_upsert(*LEVELS[0][:2])}) {_upsert(*LEVELS[1][:2])}"


def parts(sensor: list[str], ts: np.ndarray[Any, Any], value: list[float]) -> list[list[Any]]:
    """The parameters of :data:`UPSERT`: for minutes, then hours, the columns (sensor, start, n,
    total, lo, hi, m2) of the readings' aggregates per sensor and interval."""
    names: dict[str, int] = {}
    codes = np.fromiter((names.setdefault(s, len(names)) for s in sensor), np.int64, len(sensor))
    values = np.asarray(value, np.float64)
    by_code = list(names)
    return [column for _, _, width in LEVELS for column in _aggregate(codes, by_code, ts, values, width)]


def _aggregate(
    codes: np.ndarray[Any, Any],
    names: list[str],
    ts: np.ndarray[Any, Any],
    values: np.ndarray[Any, Any],
    width: int,
) -> list[list[Any]]:
    starts_of = ts - ts % width  # numpy's % floors: intervals before the epoch too
    order = np.lexsort((starts_of, codes))
    codes, starts_of, values = codes[order], starts_of[order], values[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (codes[1:] != codes[:-1]) | (starts_of[1:] != starts_of[:-1])
    starts = np.flatnonzero(first)
    n = np.diff(np.append(starts, len(order)))
    total = np.add.reduceat(values, starts)
    deviation = values - np.repeat(total / n, n)
    return [
        [names[c] for c in codes[starts].tolist()],
        starts_of[starts].tolist(),
        n.tolist(),
        total.tolist(),
        np.minimum.reduceat(values, starts).tolist(),
        np.maximum.reduceat(values, starts).tolist(),
        np.add.reduceat(deviation * deviation, starts).tolist(),
    ]


async def add_batch(con: Connection, sensor: list[str], ts: np.ndarray[Any, Any], value: list[float]) -> None:
    """Add readings to the rollups, in the caller's transaction (the one that stores them)."""
    await con.execute(UPSERT, parts(sensor, ts, value))


def usable(query: MetricsQuery) -> bool:
    """Whether the rollup can answer: only its statistics, every device, at least one whole minute."""
    lo, hi = whole(query.start, _end(query), MINUTE_US)
    return not query.device_ids and STATS.issuperset(query.aggs) and lo < hi


def whole(start: int, end: int, width: int) -> tuple[int, int]:
    """``[lo, hi)``: the intervals of ``width`` lying wholly in ``[start, end)``, as start times."""
    return -(-start // width) * width, end // width * width


def _end(query: MetricsQuery) -> int:
    # Times are integer microseconds: [start, end] is [start, end + 1).
    return query.end + 1 if query.end_inclusive else query.end


async def query_metrics(con: Connection, query: MetricsQuery) -> dict[str, dict[str, Any]]:
    """sensor → aggregate → value, from whole hours and minutes of the rollups and raw rows at the
    edges (only for queries :func:`usable` accepts)."""
    end = _end(query)
    lo, hi = whole(query.start, end, MINUTE_US)
    hour_lo, hour_hi = whole(lo, hi, HOUR_US)
    if hour_lo >= hour_hi:  # no whole hour: minutes [lo, hi)
        hour_lo = hour_hi = hi
    params: dict[str, Any] = {
        "start": query.start, "end": end, "lo": lo, "hi": hi, "hour_lo": hour_lo, "hour_hi": hour_hi
    }  # fmt: skip
    sensors = ""
    if query.sensors:
        sensors = "AND sensor = ANY(%(sensors)s)"
        params["sensors"] = [s for s in query.sensors if "\0" not in s]  # no stored text holds one
    # [start, lo) raw, [lo, hour_lo) minutes, [hour_lo, hour_hi) hours, [hour_hi, hi) minutes,
    # [hi, end) raw. Each part (a stored hour or minute, the raw edges) is a disjoint set of
    # readings: the merged m2 is the parts' m2 plus each part's n times its mean's squared distance
    # from the overall mean.
    sql = f"""WITH parts AS (
            SELECT sensor, n, total, lo, hi, m2 FROM readings_1h
            WHERE hour >= %(hour_lo)s AND hour < %(hour_hi)s {sensors}
            UNION ALL
            SELECT sensor, n, total, lo, hi, m2 FROM readings_1m
            WHERE ((minute >= %(lo)s AND minute < %(hour_lo)s) OR (minute >= %(hour_hi)s AND minute < %(hi)s))
                  {sensors}
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
