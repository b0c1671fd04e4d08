"""The PostgreSQL store's per-minute rollups on a real server: metric answers from the rollup equal
those computed here from the raw readings (count, min, max exactly; sum, mean, stddev up to
summation order) and those of the same store answering from raw rows (``rollups=off``), with late
readings landing in old minutes, two writers, partial minutes at both edges, ranges inside one
minute, device filters and quantiles; databases from before the rollups get them built at start."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import statistics
from typing import Any

import psycopg
import pytest

from fleetstream.adapters.store import postgres_rollups as rollups
from fleetstream.adapters.store.postgres import Connection, PostgresStore
from fleetstream.cluster.partitions import PartitionCheckpoint, PartitionStore
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.errors import ConfigError
from fleetstream.ports import Derived, MetricsQuery

S = 1_000_000
M = 60 * S
T0 = 28_333_340 * M  # a minute's start (2023-11-14)
STATS = ("count", "min", "max", "avg", "mean", "sum", "stddev")
Row = tuple[str, int, str, float]  # device, ts, sensor, value


def messages(rows: list[Row], seq: int) -> Batch:
    msgs = [
        DeviceMessage(d, ts, "telemetry", "Sensor", [Reading(d, ts, s, v, None, "Sensor")], None, ts, seq + i)
        for i, (d, ts, s, v) in enumerate(rows)
    ]
    return Batch.from_messages(msgs)


def load() -> list[list[Row]]:
    """Batches over minutes 0..9 after T0, shuffled within each, then late readings for minutes 1
    and 2, a minute where every value is the same, one with a single reading, one before 1970, and
    readings every 97 s over the next 4 hours and a half."""
    rng = random.Random(5)
    rows = [
        (f"d{rng.randrange(4)}", T0 + rng.randrange(10 * M), s, round(rng.uniform(-50, 150), 3))
        for _ in range(1500)
        for s in ("temp", "hum")
    ]
    rows.sort(key=lambda r: r[1])
    batches = [rows[i : i + 400] for i in range(0, len(rows), 400)]
    for b in batches:
        rng.shuffle(b)
    late = [(f"d{i % 4}", T0 + M + rng.randrange(2 * M), "temp", rng.uniform(-40, 140)) for i in range(50)]
    same = [("d1", T0 + 11 * M + i * S, "flat", 21.7) for i in range(7)]
    single = [("d2", T0 + 12 * M + 5 * S, "flat", -4.25)]
    before_epoch = [("d3", -90 * S + i * S, "temp", 0.5 * i) for i in range(60)]
    spread = [
        (f"d{i % 4}", T0 + 20 * M + i * 97 * S, s, round(rng.uniform(-50, 150), 3))
        for i in range(160)
        for s in ("temp", "hum")
    ]
    return [*batches, late, same, single, before_epoch, spread[:170], spread[170:]]


def expected(rows: list[Row], q: MetricsQuery) -> dict[str, dict[str, Any]]:
    """The query's answer computed here from the raw readings."""
    end = q.end + 1 if q.end_inclusive else q.end
    by_sensor: dict[str, list[float]] = {s: [] for s in q.sensors}
    for d, ts, s, v in rows:
        wanted = (not q.sensors or s in q.sensors) and (not q.device_ids or d in q.device_ids)
        if q.start <= ts < end and wanted:
            by_sensor.setdefault(s, []).append(v)
    out: dict[str, dict[str, Any]] = {}
    for s, vs in sorted(by_sensor.items()):
        mean = math.fsum(vs) / len(vs) if vs else None
        every = {
            "count": len(vs),
            "min": min(vs, default=None),
            "max": max(vs, default=None),
            "avg": mean,
            "mean": mean,
            "sum": math.fsum(vs) if vs else None,
            "stddev": statistics.stdev(vs) if len(vs) > 1 else None,
            "p50": statistics.median(vs) if vs else None,
        }
        out[s] = {a: every[a] for a in q.aggs}
    return out


def same(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> bool:
    """Equal answers: count, min and max exactly, other floats within 1e-9 relative."""
    if got.keys() != want.keys() or any(got[s].keys() != want[s].keys() for s in got):
        return False
    for s, stats in got.items():
        for name, value in stats.items():
            other = want[s][name]
            if isinstance(value, float) and isinstance(other, float) and name not in ("min", "max"):
                if not math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-12):
                    return False
            elif value != other or type(value) is not type(other):
                return False
    return True


QUERIES = [
    MetricsQuery(T0 + 2 * M, T0 + 7 * M, STATS),  # whole minutes only
    MetricsQuery(T0 + M + 17_500_000, T0 + 8 * M + 3 * S, STATS, ("temp",)),  # partial at both edges
    MetricsQuery(T0 + M - 1, T0 + 3 * M + 1, STATS, ("temp", "hum", "none")),  # a microsecond each side
    MetricsQuery(T0 - 5 * M, T0 + 20 * M, STATS),  # everything from T0, the flat minutes too
    MetricsQuery(-120 * S, T0 + 20 * M, ("count", "sum", "stddev")),  # from before the epoch
    MetricsQuery(-121 * S, -S, STATS, ("temp",)),  # before the epoch: a whole minute, a partial one
    MetricsQuery(T0 + 11 * M, T0 + 13 * M, STATS, ("flat",)),  # all equal, then a single reading
]


def edge_queries(rows: list[Row]) -> list[MetricsQuery]:
    """Ranges starting and ending exactly on stored readings (inclusive end as /compute/metrics asks)."""
    times = sorted(ts for _, ts, s, _ in rows if s == "temp" and ts > T0 + 4 * M)
    a, b = times[10], times[-30]
    return [
        MetricsQuery(a, b, STATS, ("temp",), end_inclusive=True),
        MetricsQuery(a, b, STATS, ("temp",)),
        MetricsQuery(T0 + 4 * M, T0 + 6 * M - 1, STATS, end_inclusive=True),  # exactly two minutes
    ]


H = 60 * M
HOURS = [  # T0 - 20 min is an hour's start
    MetricsQuery(T0 + 30 * M + 5 * S, T0 + 250 * M + 7 * S, STATS),  # 3 hours, minutes, raw edges
    MetricsQuery(T0 - 20 * M, T0 + 280 * M, STATS, ("temp",)),  # 5 whole hours, nothing else
    MetricsQuery(T0 + 40 * M - S, T0 + 100 * M + 1, ("count", "min", "max", "sum"), end_inclusive=True),
    MetricsQuery(-121 * S, T0 + 600 * M, STATS),  # from before the epoch: every level
]

RAW_ONLY = [
    MetricsQuery(T0 + 3 * M + 5 * S, T0 + 3 * M + 50 * S, STATS),  # inside one minute
    MetricsQuery(T0 + 3 * M + 30 * S, T0 + 4 * M + 30 * S, STATS),  # across a boundary, no whole minute
    MetricsQuery(T0, T0 + 10 * M, STATS, ("temp",), ("d1", "d3")),  # device filter
    MetricsQuery(T0, T0 + 10 * M, ("count", "p50"), ("hum",)),  # a quantile
]


def test_rollup_answers_equal_raw_rows_and_an_independent_computation(postgres_url: str) -> None:
    batches = load()
    rows = [r for b in batches for r in b]
    queries = [*QUERIES, *edge_queries(rows), *HOURS, *RAW_ONLY]
    assert [rollups.usable(q) for q in queries] == [True] * 14 + [False] * 4

    async def run() -> tuple[list[Any], ...]:
        # Two writers (as two cluster workers), alternating batches.
        first, second = PostgresStore(postgres_url), PostgresStore(postgres_url + "?rollups=off")
        await first.start()
        await second.start()
        try:
            for i, batch in enumerate(batches):
                await (first, second)[i % 2].write(messages(batch, 1 + 10_000 * i))
            from_rollup = [await first.query_metrics(q) for q in queries]
            from_raw = [await second.query_metrics(q) for q in queries]
            # Were the rollup wrong, the answers above would differ: make it wrong and see.
            async with first._writing() as con:
                await con.execute("UPDATE readings_1m SET n = n + 1 WHERE minute = %s", [T0 + 5 * M])
            tampered = [await first.query_metrics(q) for q in queries]
            async with first._writing() as con:
                await con.execute("UPDATE readings_1m SET n = n - 1 WHERE minute = %s", [T0 + 5 * M])
                await con.execute("UPDATE readings_1h SET n = n + 1 WHERE hour = %s", [T0 + 40 * M])
            tampered_hour = [await first.query_metrics(q) for q in queries]
            async with first._writing() as con:
                await con.execute("UPDATE readings_1h SET n = n - 1 WHERE hour = %s", [T0 + 40 * M])
            tables = [
                await first.execute(
                    f"""SELECT sensor, {column}, sum(n)::int8, min(lo), max(hi), sum(total) FROM {table}
                        GROUP BY 1, 2 ORDER BY 1, 2"""
                )
                for table, column, _ in rollups.LEVELS
            ]
        finally:
            await first.close()
            await second.close()
        return from_rollup, from_raw, tampered, tampered_hour, tables

    from_rollup, from_raw, tampered, tampered_hour, tables = asyncio.run(run())
    for q, got, raw in zip(queries, from_rollup, from_raw, strict=True):
        want = expected(rows, q)
        assert same(got, want), (q, got, want)
        assert same(raw, want), (q, raw, want)
    counts = {s: a["count"] for s, a in from_rollup[3].items()}
    assert counts == {"flat": 8, "hum": 1500, "temp": 1550}  # late readings counted once
    # Tampering changed exactly the answers that read minute 5 from readings_1m (ranges holding it
    # wholly, but not the whole hour around it), then those that read the hour from T0 + 40 min.
    # (Floats may differ in the last bits between two runs of a query: the rows' order is the plan's.)
    changed = [i for i, (a, b) in enumerate(zip(from_rollup, tampered, strict=True)) if not same(a, b)]
    assert changed == [0, 1, 3, 4, 7, 8, 9]
    changed = [i for i, (a, b) in enumerate(zip(from_rollup, tampered_hour, strict=True)) if not same(a, b)]
    assert changed == [7, 8, 10, 11, 12, 13]
    assert from_rollup[11]["temp"]["count"] == 1550 + 160
    # The tables themselves: per (sensor, minute or hour), what the raw rows hold.
    for (_, _, width), table in zip(rollups.LEVELS, tables, strict=True):
        groups: dict[tuple[str, int], list[float]] = {}
        for _, ts, s, v in rows:
            groups.setdefault((s, ts - ts % width), []).append(v)
        assert [(s, m, n, lo, hi) for s, m, n, lo, hi, _ in table] == [
            (s, m, len(vs), min(vs), max(vs)) for (s, m), vs in sorted(groups.items())
        ]
        assert all(math.isclose(t, math.fsum(groups[(s, m)]), rel_tol=1e-12) for s, m, *_, t in table)


def test_batches_merging_into_one_minute(postgres_url: str) -> None:
    """A minute's row is merged into by later batches whose values lie inside, below and above it;
    a minute of equal values has a standard deviation of exactly 0, not a rounding residue."""
    merged = [[5.0, 6.0], [1.0, 9.0], [3.0, 4.0], [7.0]]
    flat = [[0.1] * 7 for _ in range(9)]
    queries = [MetricsQuery(T0, T0 + M, STATS, ("x",)), MetricsQuery(T0, T0 + M, STATS, ("flat",))]

    async def run() -> tuple[list[dict[str, dict[str, Any]]], list[tuple[Any, ...]]]:
        store = PostgresStore(postgres_url)
        await store.start()
        try:
            for i, values in enumerate([*merged, *flat]):
                sensor = "x" if i < len(merged) else "flat"
                rows = [("d1", T0 + (i * 10 + j) * 100_000, sensor, v) for j, v in enumerate(values)]
                await store.write(messages(rows, 1 + 100 * i))
            answers = [await store.query_metrics(q) for q in queries]
            table = await store.execute("SELECT sensor, n, total, lo, hi, m2 FROM readings_1m ORDER BY 1")
            return answers, table
        finally:
            await store.close()

    (x, flat_answer), table = asyncio.run(run())
    values = [v for vs in merged for v in vs]
    assert all(rollups.usable(q) for q in queries)
    assert x == {"x": {"count": 7, "min": 1.0, "max": 9.0, "avg": 5.0, "mean": 5.0, "sum": 35.0,
                       "stddev": pytest.approx(statistics.stdev(values), rel=1e-12)}}  # fmt: skip
    assert table[1] == ("x", 7, 35.0, 1.0, 9.0, pytest.approx(math.fsum((v - 5) ** 2 for v in values)))
    assert flat_answer["flat"]["stddev"] == 0.0
    assert (flat_answer["flat"]["count"], flat_answer["flat"]["min"], flat_answer["flat"]["max"]) == (
        63,
        0.1,
        0.1,
    )


def test_a_database_from_before_the_rollups_gets_them_built_at_start(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    batches = load()
    rows = [r for b in batches for r in b]

    async def write() -> None:
        store = PostgresStore(postgres_url)
        await store.start()
        try:
            for i, batch in enumerate(batches):
                await store.write(messages(batch, 1 + 10_000 * i))
        finally:
            await store.close()

    asyncio.run(write())
    with psycopg.connect(postgres_url, autocommit=True) as con:  # as schema 3 left it
        con.execute("DROP TABLE readings_1m, readings_1h")
        con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")

    async def reopen() -> list[dict[str, dict[str, Any]]]:
        store = PostgresStore(postgres_url)
        await store.start()
        try:
            return [await store.query_metrics(q) for q in QUERIES]
        finally:
            await store.close()

    with caplog.at_level(logging.INFO, logger="fleetstream.adapters.store.postgres_queries"):
        answers = asyncio.run(reopen())
    built = [r.getMessage().split(" built")[0] for r in caplog.records if "built from" in r.getMessage()]
    assert built == ["PostgreSQL store: rollup readings_1m", "PostgreSQL store: rollup readings_1h"]
    for q, got in zip(QUERIES, answers, strict=True):
        assert same(got, expected(rows, q)), q
    with psycopg.connect(postgres_url) as con:
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        held = con.execute(
            "SELECT (SELECT sum(n) FROM readings_1m)::int8, (SELECT sum(n) FROM readings_1h)::int8"
        ).fetchone()
    assert (version, held) == (("4",), (len(rows), len(rows)))


def test_a_cluster_workers_failed_commit_leaves_no_rollup_and_its_retry_counts_once(
    postgres_url: str,
) -> None:
    """A worker stores readings, derived records and its partition checkpoint in one transaction
    (cluster/partitions.py); when that fails (a crash), the rollup keeps nothing of it, and the
    replay from the previous checkpoint writes the readings and their rollup once."""
    rows = [("d1", T0 + i * S, "temp", float(i)) for i in range(150)]  # minutes 0, 1 and half of 2
    query = MetricsQuery(T0, T0 + 3 * M, STATS)
    checkpoint = PartitionCheckpoint(0, 150, b"state")

    async def crash(con: Connection) -> None:
        msg = "the worker died before its commit"
        raise RuntimeError(msg)

    async def run() -> tuple[list[tuple[Any, ...]], dict[str, dict[str, Any]], list[tuple[Any, ...]]]:
        store = PostgresStore(postgres_url)
        await store.start()
        partitions = PartitionStore(store, "readings")
        await partitions.start()
        try:
            with pytest.raises(RuntimeError, match="died"):
                await partitions.commit([messages(rows, 1)], Derived(), [checkpoint], T0, then=crash)
            after_crash = await store.execute(
                "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM readings_1m)"
            )
            await partitions.commit([messages(rows, 1)], Derived(), [checkpoint], T0)
            table = await store.execute("SELECT minute, sum(n)::int8 FROM readings_1m GROUP BY 1 ORDER BY 1")
            return after_crash, await store.query_metrics(query), table
        finally:
            await store.close()

    after_crash, answer, table = asyncio.run(run())
    assert after_crash == [(0, 0)]
    assert table == [(T0, 60), (T0 + M, 60), (T0 + 2 * M, 30)]
    assert rollups.usable(query)
    assert same(answer, expected(rows, query))
    assert answer["temp"]["count"] == 150


def test_the_rollups_url_option() -> None:
    plain = PostgresStore("postgresql://u@h/db")
    off = PostgresStore("postgresql://u@h/db?sslmode=disable&rollups=off")
    on = PostgresStore("postgresql://u@h/db?rollups=on")
    assert (plain.url, plain.use_rollups) == ("postgresql://u@h/db", True)
    assert (off.url, off.use_rollups) == ("postgresql://u@h/db?sslmode=disable", False)
    assert (on.url, on.use_rollups) == ("postgresql://u@h/db", True)
    with pytest.raises(ConfigError, match="rollups='maybe' in the PostgreSQL URL: expected on or off"):
        PostgresStore("postgresql://u@h/db?rollups=maybe")
