"""``GET /api/v1/series`` over real HTTP on a real DuckDB file, checked against buckets computed here."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ._support import ServerProcess, iso, query

pytestmark = pytest.mark.integration

START = datetime(2024, 3, 30, 12, 0, 0, tzinfo=UTC)
"""The module's data: two days from here, across the night clocks in Amsterdam go forward."""
END = START + timedelta(days=2)
AMS = ZoneInfo("Europe/Amsterdam")
AGGS_ERROR = "expected count, min, max, avg, mean, sum, stddev, p50, p95, p99"
BUCKET_ERROR = "expected a duration like 500ms, 10s, 1m, 15m, 1h, 1d, 7d or ISO 8601 like PT5M"

Points = list[tuple[datetime, float]]


@pytest.fixture(scope="module")
def data(shared_server: ServerProcess) -> dict[tuple[str, str], Points]:
    """Per (device, sensor): temperatures of s-a every 30 s and s-b every 45 s (offset 7 s), and
    humidity of s-a every 10 min, over two days; plus a quiet hour with no data at all."""
    rng = random.Random(7)
    out: dict[tuple[str, str], Points] = {}
    batch: list[dict[str, Any]] = []

    def add(device: str, sensor: str, t: datetime, value: float) -> None:
        if START + timedelta(hours=20) <= t < START + timedelta(hours=21):
            return  # the quiet hour
        out.setdefault((device, sensor), []).append((t, value))
        batch.append({"device_id": device, "timestamp": iso(t), "sensor": sensor, "value": value})

    for i in range(2 * 86_400 // 30):
        add("s-a", "temperature", START + timedelta(seconds=30 * i), round(rng.gauss(20.0, 3.0), 3))
    for i in range(2 * 86_400 // 45):
        add("s-b", "temperature", START + timedelta(seconds=45 * i + 7), round(rng.gauss(22.0, 2.0), 3))
    for i in range(2 * 24 * 6):
        add("s-a", "humidity", START + timedelta(minutes=10 * i), float(rng.randint(30, 70)))
    rng.shuffle(batch)
    for at in range(0, len(batch), 5_000):
        status, body = shared_server.call("POST", "/api/v1/telemetry", batch[at : at + 5_000])
        assert status == 202, body
    return out


def _series(srv: ServerProcess, **params: Any) -> tuple[int, Any]:
    return srv.call("GET", query("/api/v1/series", **params))


def _expected(
    data: dict[tuple[str, str], Points],
    sensor: str,
    devices: tuple[str, ...],
    start: datetime,
    end: datetime,
    bucket_of: Callable[[datetime], datetime],
) -> list[tuple[datetime, list[float]]]:
    groups: dict[datetime, list[float]] = {}
    for device in devices:
        for t, v in data.get((device, sensor), []):
            if start <= t < end:
                groups.setdefault(bucket_of(t), []).append(v)
    return sorted(groups.items())


def _floor(seconds: int) -> Callable[[datetime], datetime]:
    def bucket_of(t: datetime) -> datetime:
        epoch = int(t.timestamp())
        return datetime.fromtimestamp(epoch - epoch % seconds, UTC)

    return bucket_of


def _local_midnight(t: datetime) -> datetime:
    day = t.astimezone(AMS).date()
    return datetime(day.year, day.month, day.day, tzinfo=AMS)


def _check(
    found: list[dict[str, Any]], expected: list[tuple[datetime, list[float]]], tz: str = "UTC"
) -> None:
    """Bucket starts as the server writes them, then every aggregate asked for."""
    if tz == "UTC":
        assert [p["t"] for p in found] == [iso(t) for t, _ in expected]
    else:
        assert [p["t"] for p in found] == [t.astimezone(ZoneInfo(tz)).isoformat() for t, _ in expected]
    for point, (_, values) in zip(found, expected, strict=True):
        for name, value in point.items():
            if name == "count":
                assert value == len(values)
            elif name in ("min", "max"):
                assert value == {"min": min, "max": max}[name](values)
            elif name == "avg":
                assert value == pytest.approx(statistics.fmean(values), rel=1e-9)
            elif name == "sum":
                assert value == pytest.approx(math.fsum(values), rel=1e-9)
            elif name == "p95" and len(values) == 1:
                assert value == values[0]
            elif name == "p95":
                assert value == pytest.approx(statistics.quantiles(values, n=100, method="inclusive")[94])
            else:
                assert name == "t", name


RANGE = {"from_": iso(START), "to": iso(START + timedelta(hours=1))}


def test_minute_buckets_of_the_whole_fleet(
    shared_server: ServerProcess, data: dict[tuple[str, str], Points]
) -> None:
    status, body = _series(shared_server, sensor="temperature", bucket="1m", agg="avg,max,count", **RANGE)

    assert status == 200
    assert list(body) == ["from", "to", "bucket", "tz", "series"]
    assert (body["from"], body["to"], body["bucket"], body["tz"]) == (
        "2024-03-30T12:00:00Z",
        "2024-03-30T13:00:00Z",
        "1m",
        "UTC",
    )
    assert list(body["series"]) == ["temperature"]
    assert [list(p) for p in body["series"]["temperature"][:1]] == [["t", "avg", "max", "count"]]
    expected = _expected(data, "temperature", ("s-a", "s-b"), START, START + timedelta(hours=1), _floor(60))
    assert len(expected) == 60
    _check(body["series"]["temperature"], expected)


def test_odd_bucket_for_one_device_with_every_sensor(
    shared_server: ServerProcess, data: dict[tuple[str, str], Points]
) -> None:
    start, end = START + timedelta(minutes=3, seconds=5), START + timedelta(minutes=40)
    status, body = _series(
        shared_server, device_id="s-a", bucket="97s", agg="count,min,sum,p95", from_=iso(start), to=iso(end)
    )

    assert status == 200
    assert body["bucket"] == "1m37s"
    assert list(body["series"]) == ["humidity", "temperature"]
    for sensor in ("humidity", "temperature"):
        _check(body["series"][sensor], _expected(data, sensor, ("s-a",), start, end, _floor(97)))
    assert {p["count"] for p in body["series"]["temperature"][1:-1]} == {3, 4}  # 97 s, a reading per 30 s


def test_day_buckets_at_midnight_in_amsterdam_across_dst(
    shared_server: ServerProcess, data: dict[tuple[str, str], Points]
) -> None:
    status, body = _series(
        shared_server,
        sensor="temperature",
        device_id="s-b",
        bucket="1d",
        tz="Europe/Amsterdam",
        agg="count,avg,min,max",
        from_=iso(START),
        to=iso(END),
    )

    assert status == 200
    assert (body["bucket"], body["tz"]) == ("1d", "Europe/Amsterdam")
    points = body["series"]["temperature"]
    assert [p["t"] for p in points] == [
        "2024-03-30T00:00:00+01:00",
        "2024-03-31T00:00:00+01:00",  # 23 hours long: clocks go forward at 02:00
        "2024-04-01T00:00:00+02:00",
    ]
    _check(points, _expected(data, "temperature", ("s-b",), START, END, _local_midnight), "Europe/Amsterdam")
    assert points[1]["count"] == 23 * 80 - 80  # every 45 s for 23 h, less the quiet hour


def test_hour_buckets_are_shown_in_the_zone_but_stay_on_the_hour(
    shared_server: ServerProcess, data: dict[tuple[str, str], Points]
) -> None:
    start, end = START + timedelta(hours=12), START + timedelta(hours=16)  # 00:00 to 04:00 UTC on the 31st
    status, body = _series(
        shared_server,
        sensor="humidity",
        bucket="PT1H",
        tz="Europe/Amsterdam",
        agg="count",
        from_=iso(start),
        to=iso(end),
    )

    assert status == 200
    assert [p["t"] for p in body["series"]["humidity"]] == [
        "2024-03-31T01:00:00+01:00",
        "2024-03-31T03:00:00+02:00",  # 01:00 UTC: 02:00 to 03:00 local never happened
        "2024-03-31T04:00:00+02:00",
        "2024-03-31T05:00:00+02:00",
    ]
    _check(
        body["series"]["humidity"],
        _expected(data, "humidity", ("s-a",), start, end, _floor(3600)),
        "Europe/Amsterdam",
    )


def test_buckets_only_where_there_is_data(
    shared_server: ServerProcess, data: dict[tuple[str, str], Points]
) -> None:
    start = START + timedelta(hours=19)
    status, body = _series(
        shared_server,
        sensor="humidity,pressure",
        bucket="30m",
        agg="count",
        from_=iso(start),
        to=iso(start + timedelta(hours=3)),
    )

    assert status == 200
    assert body["series"]["pressure"] == []
    times = [p["t"] for p in body["series"]["humidity"]]
    assert times == [
        "2024-03-31T07:00:00Z",
        "2024-03-31T07:30:00Z",
        "2024-03-31T09:00:00Z",
        "2024-03-31T09:30:00Z",
    ]
    assert all(p["count"] == 3 for p in body["series"]["humidity"])


def test_default_is_avg_with_500_points(
    shared_server: ServerProcess, data: dict[tuple[str, str], Points]
) -> None:
    status, body = _series(shared_server, sensor="temperature", device_id="s-a", **RANGE)

    assert status == 200
    assert body["bucket"] == "10s"  # the smallest nice size giving at most 500 buckets in an hour: 360
    points = body["series"]["temperature"]
    assert all(list(p) == ["t", "avg"] for p in points)
    _check(points, _expected(data, "temperature", ("s-a",), START, START + timedelta(hours=1), _floor(10)))


@pytest.mark.parametrize(
    ("points", "span", "bucket"),
    [
        (10, timedelta(hours=1), "10m"),  # 5m would make 12
        (120, timedelta(hours=1), "30s"),
        (100, timedelta(days=2), "30m"),  # 96 buckets; 15m would make 192
        (1, timedelta(hours=2), "2h"),  # 12:00 to 14:00 sits in one 2 h bucket
    ],
)
def test_points_picks_the_smallest_nice_bucket(
    shared_server: ServerProcess,
    data: dict[tuple[str, str], Points],
    points: int,
    span: timedelta,
    bucket: str,
) -> None:
    status, body = _series(
        shared_server,
        sensor="temperature",
        points=points,
        agg="count",
        from_=iso(START),
        to=iso(START + span),
    )

    assert status == 200
    assert body["bucket"] == bucket
    assert 0 < len(body["series"]["temperature"]) <= points
    assert sum(p["count"] for p in body["series"]["temperature"]) == len(
        [t for d in ("s-a", "s-b") for t, _ in data[(d, "temperature")] if START <= t < START + span]
    )


def test_points_keep_a_long_range_small(
    shared_server: ServerProcess, data: dict[tuple[str, str], Points]
) -> None:
    status, body = _series(
        shared_server, sensor="humidity", points=200, from_="2020-01-01T00:00:00Z", to="2030-01-01T00:00:00Z"
    )

    assert status == 200
    assert body["bucket"] == "30d"
    assert len(body["series"]["humidity"]) == 1


def test_default_range_is_the_hour_before_to(
    shared_server: ServerProcess, data: dict[tuple[str, str], Points]
) -> None:
    status, body = _series(shared_server, sensor="humidity", bucket="1h", to=iso(START + timedelta(hours=2)))

    assert status == 200
    assert (body["from"], body["to"]) == ("2024-03-30T13:00:00Z", "2024-03-30T14:00:00Z")
    assert [p["t"] for p in body["series"]["humidity"]] == ["2024-03-30T13:00:00Z"]


def _error(message: str) -> tuple[int, dict[str, Any]]:
    return 400, {"error": {"code": "invalid_input", "message": message, "details": None}}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tz": "Mars/Base", "bucket": "1d"}, "tz: unknown time zone 'Mars/Base'"),
        ({"tz": "europe/amsterdam"}, "tz: unknown time zone 'europe/amsterdam'"),
        ({"bucket": "5 minutes"}, f"bucket: {BUCKET_ERROR}, got '5 minutes'"),
        ({"bucket": "0s"}, "bucket: must be longer than 0, got '0s'"),
        ({"bucket": "-10s"}, "bucket: must be longer than 0, got '-10s'"),
        (
            {"bucket": "P1M"},
            "bucket: months and years have no fixed length: use days (e.g. 30d, 365d), got 'P1M'",
        ),
        (
            {"bucket": "36h"},
            "bucket: a bucket of a day or more must be whole days (1d, 2d, 7d, ...), got '36h'",
        ),
        (
            {"bucket": "100ms"},
            "bucket: 100ms makes 36,000 buckets from 2024-03-30T12:00:00Z to 2024-03-30T13:00:00Z, "
            "more than 10,000: use points= or a larger bucket",
        ),
        ({"bucket": "1m", "points": "100"}, "give either bucket or points, not both"),
        ({"points": "0"}, "points: expected a whole number from 1 to 10,000, got '0'"),
        ({"points": "10001"}, "points: expected a whole number from 1 to 10,000, got '10001'"),
        ({"points": "lots"}, "points: expected a whole number from 1 to 10,000, got 'lots'"),
        ({"agg": "median"}, f"agg: unknown aggregate(s) median; {AGGS_ERROR}"),
        (
            {"to": "2024-03-30T12:00:00Z"},
            "from (2024-03-30T12:00:00Z) must be before to (2024-03-30T12:00:00Z)",
        ),
        (
            {"from_": "2024-03-30T13:00:00Z", "to": "2024-03-30T12:00:00Z"},
            "from (2024-03-30T13:00:00Z) must be before to (2024-03-30T12:00:00Z)",
        ),
        (
            {"from_": "soon"},
            'from: expected RFC 3339 (e.g. "2023-03-28T20:04:22Z") or "YYYY-MM-DD HH:MM:SS", got "soon"',
        ),
        (
            {"from_": "0001-01-01T00:00:00Z", "to": "0001-01-01T01:00:00Z", "bucket": "7s"},
            "bucket: 7s buckets in UTC near the range would fall outside 0001-01-01 to 9999-12-31",
        ),
        (
            {"from_": "0001-01-01T00:00:00Z", "to": "0001-01-01T01:00:00Z", "tz": "America/New_York"},
            "points: no bucket near the range can be shown in America/New_York "
            "(0001-01-01 to 9999-12-31 only)",
        ),
    ],
)
def test_bad_parameters_are_400(shared_server: ServerProcess, params: dict[str, str], message: str) -> None:
    merged = {**RANGE, **params}
    assert _series(shared_server, **merged) == _error(message)
