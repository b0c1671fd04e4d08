"""One contract for every Store adapter: an adapter is done when it passes all of these."""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fleetstream.adapters.store.duckdb import DuckDBStore
from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ports import DeadLetter, MetricsQuery, SeriesQuery, Store
from fleetstream.testing import InMemoryStore

S = 1_000_000


def make_memory(tmp: Path) -> Store:
    return InMemoryStore()


def make_duckdb(tmp: Path) -> Store:
    return DuckDBStore(f"duckdb:///{tmp / 'store.duckdb'}")


def make_postgres(tmp: Path, request: pytest.FixtureRequest) -> Store:
    """A store on a fresh database of the session's PostgreSQL cluster (tests/conftest.py)."""
    return PostgresStore(request.getfixturevalue("postgres_url"))


ADAPTERS: dict[str, Callable[[Path, pytest.FixtureRequest], Store]] = {
    "memory": lambda tmp, _: make_memory(tmp),
    "duckdb": lambda tmp, _: make_duckdb(tmp),
    "postgresql": make_postgres,
}


@pytest.fixture(params=list(ADAPTERS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = ADAPTERS[request.param](tmp_path, request)
    asyncio.run(s.start())
    yield s
    asyncio.run(s.close())


def msg(
    seq: int, device: str, ts_s: int, values: dict[str, float], msg_id: str | None = None
) -> DeviceMessage:
    readings = [Reading(device, ts_s * S, k, v, None, "Sensor", msg_id) for k, v in values.items()]
    return DeviceMessage(
        device, ts_s * S, "telemetry" if readings else "startup", "Sensor", readings, msg_id, ts_s * S, seq
    )


def call(coro: Any) -> Any:
    return asyncio.run(coro)


DATA = [
    msg(1, "a", 10, {"t": 1.0, "h": 50.0}),
    msg(2, "a", 20, {"t": 3.0}),
    msg(3, "b", 15, {"t": 8.0}, msg_id="m-1"),
    msg(4, "b", 30, {}),
]


def test_empty_store(store: Store) -> None:
    assert call(store.log_position()) == (0, None)
    q = MetricsQuery(0, 100 * S, ("count", "min"), ("t",))
    assert call(store.query_metrics(q)) == {"t": {"count": 0, "min": None}}


def test_write_then_position_and_sensors(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    assert call(store.log_position()) == (4, 30 * S)
    assert call(store.sensors()) == {"t", "h"}


def test_metrics_half_open_and_inclusive(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    aggs = ("count", "min", "max", "avg", "sum", "stddev")
    half_open = call(store.query_metrics(MetricsQuery(10 * S, 20 * S, aggs, ("t",))))
    assert half_open["t"]["count"] == 2
    assert half_open["t"]["sum"] == 9.0
    inclusive = call(store.query_metrics(MetricsQuery(10 * S, 20 * S, aggs, ("t",), end_inclusive=True)))
    t = inclusive["t"]
    assert (t["count"], t["min"], t["max"], t["sum"]) == (3, 1.0, 8.0, 12.0)
    assert t["avg"] == pytest.approx(4.0)
    assert t["stddev"] == pytest.approx(((1 - 4) ** 2 + (3 - 4) ** 2 + (8 - 4) ** 2) ** 0.5 / 2**0.5)
    by_device = call(store.query_metrics(MetricsQuery(0, 100 * S, ("count",), (), ("a",))))
    assert by_device == {"h": {"count": 1}, "t": {"count": 2}}


def test_quantiles(store: Store) -> None:
    call(store.write(Batch.from_messages([msg(i, "q", i, {"v": float(i)}) for i in range(1, 101)])))
    r = call(store.query_metrics(MetricsQuery(0, 1000 * S, ("p50", "p95", "p99"), ("v",))))["v"]
    assert r["p50"] == pytest.approx(50.5)
    assert r["p95"] == pytest.approx(95.05)
    assert r["p99"] == pytest.approx(99.01)


def test_stored_keys_by_time_and_by_msg_id(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    items = [
        (("a", "t", 10 * S), 10 * S),  # stored
        (("a", "t", 11 * S), 11 * S),  # not stored
        (("b", "t", "m-1"), 99 * S),  # stored by msg id, whatever the time
        (("b", "t", "m-2"), 15 * S),  # other id
        (("b", "@startup", 30 * S), 30 * S),  # a stored bare message
    ]
    assert call(store.stored_keys(items)) == {
        ("a", "t", 10 * S),
        ("b", "t", "m-1"),
        ("b", "@startup", 30 * S),
    }


def test_recent_keys(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    assert sorted(call(store.recent_keys(20 * S)), key=str) == sorted(
        [(("a", "t", 20 * S), 20 * S), (("b", "@startup", 30 * S), 30 * S)], key=str
    )


LETTERS = [
    DeadLetter(5 * S, "mqtt", "devices/a/telemetry", "malformed JSON at line 1, column 2", b"{x\xff"),
    DeadLetter(
        6 * S,
        "mqtt",
        "devices/b/telemetry",
        "1 of 2 items rejected",
        b'[{"sensor":"t","value":1},{"value":"abc"}]',
        ({"index": 1, "error": 'value: expected a finite number, got "abc"'},),
    ),
    DeadLetter(7 * S, "kafka", None, "not a recognised message", b"{}"),
]


def test_dead_letters_empty(store: Store) -> None:
    assert call(store.dead_letters()) == []
    assert call(store.dead_letters("mqtt", 10)) == []


def test_dead_letters_read_back_newest_first_with_ids(store: Store) -> None:
    call(store.write_dead_letters(LETTERS[:2]))
    call(store.write_dead_letters(LETTERS[2:]))
    call(store.write_dead_letters([]))

    got = call(store.dead_letters())

    assert [d.id for d in got] == [3, 2, 1]
    assert got == [
        DeadLetter(d.received_at, d.source, d.topic, d.reason, d.payload, d.errors, id=i)
        for i, d in reversed(list(enumerate(LETTERS, 1)))
    ]


def test_dead_letters_by_source_and_limit(store: Store) -> None:
    call(store.write_dead_letters(LETTERS))

    topics = [d.topic for d in call(store.dead_letters("mqtt"))]
    assert topics == ["devices/b/telemetry", "devices/a/telemetry"]
    assert [d.id for d in call(store.dead_letters("mqtt", 1))] == [2]
    assert [d.source for d in call(store.dead_letters(None, 2))] == ["kafka", "mqtt"]
    assert call(store.dead_letters("http")) == []


def test_dead_letters_leave_readings_alone(store: Store) -> None:
    call(store.write(Batch.from_messages(DATA)))
    call(store.write_dead_letters(LETTERS))

    assert call(store.log_position()) == (4, 30 * S)
    assert call(store.sensors()) == {"t", "h"}


def test_duckdb_keeps_dead_letters_across_reopen(tmp_path: Path) -> None:
    s = make_duckdb(tmp_path)
    call(s.start())
    call(s.write_dead_letters(LETTERS[:1]))
    call(s.close())
    again = make_duckdb(tmp_path)
    call(again.start())
    call(again.write_dead_letters(LETTERS[1:2]))
    got = [(d.id, d.payload) for d in call(again.dead_letters())]
    assert got == [(2, LETTERS[1].payload), (1, b"{x\xff")]
    call(again.close())


def test_duckdb_survives_reopen(tmp_path: Path) -> None:
    s = make_duckdb(tmp_path)
    call(s.start())
    call(s.write(Batch.from_messages(DATA)))
    call(s.close())
    again = make_duckdb(tmp_path)
    call(again.start())
    assert call(again.log_position()) == (4, 30 * S)
    call(again.close())


# --- series ------------------------------------------------------------------------------------

AMS = ZoneInfo("Europe/Amsterdam")
SPRING = datetime(2024, 3, 30, 12, tzinfo=UTC)
"""Half a day before clocks in Amsterdam go forward (2024-03-31 02:00 → 03:00)."""


def _at(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _series_data() -> list[DeviceMessage]:
    """Every 25 minutes for two days across the DST change: `t` from devices a and b, `h` from a;
    plus four readings either side of the epoch for buckets that must floor below zero."""
    out = []
    for i in range(2 * 24 * 60 // 25):
        ts = _at(SPRING + timedelta(minutes=25 * i))
        readings = [Reading("a", ts, "t", float(i % 17), None, "Sensor", None)]
        readings.append(Reading("b", ts, "t", float(i % 5) * 1.5, None, "Sensor", None))
        if i % 3 == 0:
            readings.append(Reading("a", ts, "h", 40.0 + i % 11, None, "Sensor", None))
        out.extend(DeviceMessage(r.device_id, ts, "telemetry", "Sensor", [r], None, ts, 0) for r in readings)
    for s in (-8, -7, -1, 0, 6, 13):
        out.append(msg(0, "e", s, {"t": float(s)}))
    return [replace(m, seq=i + 1) for i, m in enumerate(out)]


def _expected_series(
    messages: list[DeviceMessage], start: int, end: int, sensor: str, start_of: Callable[[int], int]
) -> list[tuple[int, list[float]]]:
    groups: dict[int, list[float]] = {}
    for m in messages:
        for r in m.readings:
            if r.sensor == sensor and start <= r.ts < end:
                groups.setdefault(start_of(r.ts), []).append(r.value)
    return sorted(groups.items())


def _check(found: list[dict[str, Any]], expected: list[tuple[int, list[float]]]) -> None:
    assert [p["t"] for p in found] == [t for t, _ in expected]
    for point, (_, values) in zip(found, expected, strict=True):
        assert point["count"] == len(values)
        assert (point["min"], point["max"]) == (min(values), max(values))
        assert point["sum"] == pytest.approx(math.fsum(values), rel=1e-12)
        assert point["avg"] == pytest.approx(statistics.fmean(values), rel=1e-12)


AGGS = ("count", "min", "max", "sum", "avg")


def test_series_day_buckets_at_midnight_in_amsterdam_across_dst(store: Store) -> None:
    data = _series_data()
    call(store.write(Batch.from_messages(data)))
    start, end = _at(SPRING), _at(SPRING + timedelta(days=2))

    def local_midnight(ts: int) -> int:
        day = datetime.fromtimestamp(ts / S, AMS).date()
        return _at(datetime(day.year, day.month, day.day, tzinfo=AMS))

    got = call(store.query_series(SeriesQuery(start, end, 86_400 * S, AGGS, ("t",), (), "Europe/Amsterdam")))

    assert list(got) == ["t"]
    assert [p["t"] for p in got["t"]] == [
        _at(datetime.fromisoformat(t))
        for t in ("2024-03-30T00:00:00+01:00", "2024-03-31T00:00:00+01:00", "2024-04-01T00:00:00+02:00")
    ]
    _check(got["t"], _expected_series(data, start, end, "t", local_midnight))


def test_series_odd_bucket_across_the_epoch(store: Store) -> None:
    data = _series_data()
    call(store.write(Batch.from_messages(data)))

    got = call(store.query_series(SeriesQuery(-60 * S, 60 * S, 7 * S, AGGS, ("t",))))

    floor7 = _expected_series(data, -60 * S, 60 * S, "t", lambda ts: ts // (7 * S) * 7 * S)
    assert [p["t"] // S for p in got["t"]] == [-14, -7, 0, 7]  # -8 → -14; -7, -1 → -7; 0, 6 → 0; 13 → 7
    _check(got["t"], floor7)


def test_series_sub_day_buckets_ignore_the_zone_and_filter_devices(store: Store) -> None:
    data = _series_data()
    call(store.write(Batch.from_messages(data)))
    start, end = _at(SPRING + timedelta(hours=10)), _at(SPRING + timedelta(hours=16))
    only_a = [m for m in data if m.device_id == "a"]
    hourly = _expected_series(only_a, start, end, "t", lambda ts: ts - ts % (3_600 * S))

    for tz in ("UTC", "Asia/Kolkata"):
        got = call(store.query_series(SeriesQuery(start, end, 3_600 * S, AGGS, (), ("a",), tz)))
        assert list(got) == ["h", "t"]
        _check(got["t"], hourly)
        _check(got["h"], _expected_series(only_a, start, end, "h", lambda ts: ts - ts % (3_600 * S)))


def test_series_week_buckets_start_on_monday(store: Store) -> None:
    data = _series_data()
    call(store.write(Batch.from_messages(data)))
    start, end = _at(SPRING), _at(SPRING + timedelta(days=2))

    got = call(
        store.query_series(
            SeriesQuery(start, end, 7 * 86_400 * S, ("count",), ("h",), (), "Europe/Amsterdam")
        )
    )

    # Saturday 30 March to Monday 1 April: the week from Monday 25 March, then the one from 1 April.
    monday = _at(datetime(2024, 3, 25, tzinfo=AMS))
    next_monday = _at(datetime(2024, 4, 1, tzinfo=AMS))
    expected = _expected_series(data, start, end, "h", lambda ts: monday if ts < next_monday else next_monday)
    assert got == {"h": [{"t": t, "count": len(vs)} for t, vs in expected]}
    assert len(expected) == 2


def test_series_quantiles_stddev_and_empty(store: Store) -> None:
    call(store.write(Batch.from_messages([msg(i, "q", i, {"v": float(i * i % 23)}) for i in range(1, 41)])))
    aggs = ("count", "p50", "p95", "stddev")

    got = call(store.query_series(SeriesQuery(0, 100 * S, 20 * S, aggs, ("v", "nothing"))))

    assert list(got) == ["nothing", "v"]
    assert got["nothing"] == []
    for point, seconds in zip(got["v"], (range(1, 20), range(20, 40), range(40, 41)), strict=True):
        values = [float(i * i % 23) for i in seconds]
        assert point["t"] == seconds[-1] // 20 * 20 * S
        assert point["count"] == len(values)
        if len(values) > 1:
            cuts = statistics.quantiles(values, n=100, method="inclusive")
            assert point["p50"] == pytest.approx(cuts[49])
            assert point["p95"] == pytest.approx(cuts[94])
            assert point["stddev"] == pytest.approx(statistics.stdev(values))
        else:
            assert (point["p50"], point["p95"], point["stddev"]) == (values[0], values[0], None)
    assert call(store.query_series(SeriesQuery(200 * S, 300 * S, S, aggs))) == {}


def test_every_store_answers_the_same_series(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    data = Batch.from_messages(_series_data())
    queries = [
        SeriesQuery(
            _at(SPRING), _at(SPRING + timedelta(days=2)), 86_400 * S, AGGS, (), (), "Europe/Amsterdam"
        ),
        SeriesQuery(-60 * S, _at(SPRING + timedelta(days=2)), 7 * S, AGGS),
        SeriesQuery(
            _at(SPRING),
            _at(SPRING + timedelta(hours=30)),
            3 * 3_600 * S,
            AGGS,
            ("t",),
            ("b",),
            "America/New_York",
        ),
    ]
    answers = []
    for make in ADAPTERS.values():
        s = make(tmp_path, request)
        call(s.start())
        call(s.write(data))
        answers.append([call(s.query_series(q)) for q in queries])
        call(s.close())

    memory, *others = answers
    assert len(others) == len(ADAPTERS) - 1
    for a, b in ((a, b) for other in others for a, b in zip(memory, other, strict=True)):
        assert list(a) == list(b)
        for sensor in a:
            assert [p["t"] for p in a[sensor]] == [p["t"] for p in b[sensor]]
            for p, q in zip(a[sensor], b[sensor], strict=True):
                assert p == pytest.approx(q, rel=1e-12)
