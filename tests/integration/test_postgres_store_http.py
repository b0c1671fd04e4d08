"""``fleetstream up --store postgresql://...``: readings taken over HTTP are stored in PostgreSQL and
the queries answer from it, across a restart."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest

from ._support import T0, ServerProcess, metrics, reading, stop_cleanly

pytestmark = pytest.mark.integration

VALUES = [21.5, 19.25, 23.0, 22.125, 18.0, 25.5]


def test_up_stores_readings_in_postgresql_and_answers_from_it(
    start: Callable[..., ServerProcess], postgres_url: str
) -> None:
    srv = start("--store", postgres_url)
    assert "readings in a BRIN-indexed table" in srv.output()
    batch = [reading("pg-a", 10 * i, v) for i, v in enumerate(VALUES)]
    batch.append(reading("pg-b", 5, 40.0, sensor="humidity"))

    status, body = srv.call("POST", "/api/v1/telemetry", batch)

    assert (status, body) == (202, {"accepted": len(batch), "rejected": []})
    found = metrics(srv, ["pg-a", "pg-b"], agg="count,min,max,avg,sum,stddev,p50")
    assert list(found) == ["humidity", "temperature"]
    temperature = found["temperature"]
    assert (temperature["count"], temperature["min"], temperature["max"]) == (6, 18.0, 25.5)
    assert temperature["sum"] == pytest.approx(math.fsum(VALUES), rel=1e-12)
    assert temperature["avg"] == pytest.approx(statistics.fmean(VALUES), rel=1e-12)
    assert temperature["stddev"] == pytest.approx(statistics.stdev(VALUES), rel=1e-12)
    assert temperature["p50"] == pytest.approx(statistics.median(VALUES))
    assert found["humidity"]["count"] == 1
    # Acknowledged means stored: the rows are in PostgreSQL already.
    with psycopg.connect(postgres_url) as con:
        rows = con.execute("SELECT device_id, sensor, value FROM readings ORDER BY seq").fetchall()
    assert sorted(rows) == sorted((r["device_id"], r["sensor"], r["value"]) for r in batch)

    compute = {
        "temperature": ["count", "average"],
        "from": "2023-03-28 20:00:00",
        "to": "2023-03-28 20:00:30",
    }
    assert srv.call("POST", "/compute/metrics", compute) == (
        200,
        {"result": {"temperature": {"count": 4, "average": statistics.fmean(VALUES[:4])}}, "errors": []},
    )

    stop_cleanly(srv)
    again = start("--store", postgres_url)
    # After a restart, the store's log goes on: the same readings again are duplicates, new ones count.
    status, body = again.call("POST", "/api/v1/telemetry", [*batch[:2], reading("pg-a", 100, 30.0)])
    assert status == 202, body
    after = metrics(again, "pg-a", agg="count,max", end=T0 + timedelta(hours=1))
    assert after == {"temperature": {"count": 7, "max": 30.0}}


def test_an_unreachable_database_is_a_clear_startup_error(start: Callable[..., ServerProcess]) -> None:
    with pytest.raises(RuntimeError) as failed:
        start("--store", "postgresql://postgres@127.0.0.1:1/nothing")

    assert "cannot open PostgreSQL store postgresql://postgres@127.0.0.1:1/nothing" in str(failed.value)
    assert "Traceback" not in str(failed.value)
