"""Property: through the whole engine (gateway, dedup, windows), random disordered data with random
re-sends gives windows equal to SQL aggregates over the deduplicated raw rows."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime
from typing import Any

import duckdb
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetstream.config import Settings
from fleetstream.testing import Harness

S = 1_000_000
BASE_S = 1_717_243_200  # 2024-06-01T12:00:00Z


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / S, UTC).isoformat()


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[tuple[str, str, int, float]], list[list[int]]]:
    """Distinct readings (device, sensor, ts µs, value) and the order they are sent in: sorted by
    event time, shuffled within 4 s (below the 5 s out-of-orderness), with re-sends mixed in."""
    n = draw(st.integers(1, 120))
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    rows: dict[tuple[str, str, int], float] = {}
    for _ in range(n):
        device = f"d{rng.randrange(4)}"
        sensor = rng.choice(["t", "h"])
        ts = (BASE_S + rng.randrange(0, 90)) * S + rng.randrange(0, S, 1000)
        rows[(device, sensor, ts)] = round(rng.uniform(-20, 40), 3)
    readings = [(d, s, t, v) for (d, s, t), v in rows.items()]
    arrival = [t / S + rng.uniform(0, 4) for _, _, t, _ in readings]
    order = sorted(range(len(readings)), key=lambda i: arrival[i])
    resend_rate = draw(st.sampled_from([0.0, 0.1, 0.5]))
    sends: list[int] = []
    for i in order:
        sends.append(i)
        if rng.random() < resend_rate:
            sends.append(rng.choice(order[: order.index(i) + 1]))  # a re-send of something already sent
    cuts = sorted(rng.sample(range(1, len(sends)), min(len(sends) - 1, draw(st.integers(0, 8)))))
    batches = [sends[a:b] for a, b in zip([0, *cuts], [*cuts, len(sends)], strict=True)]
    return readings, batches


def run(readings: list[tuple[str, str, int, float]], batches: list[list[int]]) -> dict[Any, Any]:
    async def scenario() -> dict[Any, Any]:
        async with Harness(Settings(simulator={"enabled": False}), start_us=(BASE_S + 95) * S) as h:
            for batch in batches:
                body = [
                    {
                        "device_id": readings[i][0],
                        "sensor": readings[i][1],
                        "ts": iso(readings[i][2]),
                        "value": readings[i][3],
                    }
                    for i in batch
                ]
                result = await h.post(msgspec.json.encode(body))
                assert result.accepted == len(body)
            h.clock.advance(60)
            await h.runtime.engine.tick()
            h.clock.advance(60)
            await h.runtime.engine.tick()
            await h.runtime.engine.flush()
            assert h.runtime.engine.processors.late_total == {}
            return {
                key: (w.count, w.sum, w.min, w.max, w.mean, w.stddev)
                for key, w in h.store.windows.items()
                if key[2] == 10 * S
            }

    return asyncio.run(scenario())


def by_sql(readings: list[tuple[str, str, int, float]]) -> dict[Any, Any]:
    con = duckdb.connect()
    con.execute("CREATE TABLE r (device_id VARCHAR, sensor VARCHAR, ts BIGINT, value DOUBLE)")
    con.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", readings)
    rows = con.execute(
        """SELECT sensor, device_id, ts // 10000000 * 10000000 AS start, count(*), sum(value), min(value),
                  max(value), avg(value), stddev_samp(value)
           FROM r GROUP BY GROUPING SETS ((sensor, device_id, start), (sensor, start))"""
    ).fetchall()
    return {
        (sensor, device or "*", 10 * S, start): (n, total, lo, hi, mean, sd)
        for sensor, device, start, n, total, lo, hi, mean, sd in rows
    }


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=40, deadline=None)
@given(datasets())
def test_windows_equal_sql_over_the_deduplicated_rows(data: tuple[Any, list[list[int]]]) -> None:
    readings, batches = data
    got = run(readings, batches)
    expected = by_sql(readings)
    assert set(got) == set(expected)
    for key, (n, total, lo, hi, mean, sd) in expected.items():
        g = got[key]
        assert g[0] == n, key
        assert all(close(x, y) for x, y in zip(g[1:], (total, lo, hi, mean, sd), strict=True)), (key, g)
