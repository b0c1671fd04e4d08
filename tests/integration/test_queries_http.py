"""Queries over real HTTP on a real DuckDB file, checked against the same numbers computed in Python."""

from __future__ import annotations

import math
import random
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ._support import ServerProcess, iso, metrics, query

pytestmark = pytest.mark.integration

DAY = datetime(2024, 1, 10, 10, 0, 0, tzinfo=UTC)
"""Event times of the module's data set: one day no other test of this module writes to."""

ALL_AGGS = "count,min,max,avg,mean,sum,stddev,p50,p95,p99"
AGGS_ERROR = "expected count, min, max, avg, mean, sum, stddev, p50, p95, p99"
TIME_ERROR = 'expected RFC 3339 (e.g. "2023-03-28T20:04:22Z") or "YYYY-MM-DD HH:MM:SS", got'


def _expected(values: list[float]) -> dict[str, Any]:
    """Every aggregate of ``values``, computed here (quantiles: linear interpolation between order
    statistics, i.e. ``statistics.quantiles(method="inclusive")`` = SQL ``quantile_cont``)."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "avg": statistics.fmean(values),
        "mean": statistics.fmean(values),
        "sum": math.fsum(values),
        "stddev": statistics.stdev(values),
        "p50": cuts[49],
        "p95": cuts[94],
        "p99": cuts[98],
    }


def _close(found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal keys, equal counts, floats equal up to summation order (1e-9 relative)."""
    assert list(found) == list(expected)
    for name, value in expected.items():
        if isinstance(value, float):
            assert found[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
        else:
            assert found[name] == value, name


class DataSet:
    """What the module posted: per (device, sensor), the (event time, value) pairs."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str], list[tuple[datetime, float]]] = {}

    def values(
        self,
        sensor: str,
        devices: tuple[str, ...],
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[float]:
        return [
            v
            for d in devices
            for t, v in self.points.get((d, sensor), [])
            if (start is None or t >= start) and (end is None or t < end)
        ]


@pytest.fixture(scope="module")
def data(shared_server: ServerProcess) -> DataSet:
    """Two devices with 60 temperatures each (10 s apart, the second 5 s later), one with humidity."""
    rng = random.Random(4)
    out = DataSet()
    batch = []
    for i in range(60):
        for device, offset in (("q-a", 0), ("q-b", 5)):
            t = DAY + timedelta(seconds=10 * i + offset)
            value = round(rng.gauss(21.0, 4.0), 3)
            out.points.setdefault((device, "temperature"), []).append((t, value))
            batch.append({"device_id": device, "timestamp": iso(t), "sensor": "temperature", "value": value})
        if i % 3 == 0:
            t = DAY + timedelta(seconds=10 * i)
            value = float(rng.randint(30, 70))
            out.points.setdefault(("q-a", "humidity"), []).append((t, value))
            batch.append({"device_id": "q-a", "timestamp": iso(t), "humidity": value, "tag": "Hygrometer"})
    rng.shuffle(batch)  # arrival order is not event-time order
    status, body = shared_server.call("POST", "/api/v1/telemetry", batch)
    assert (status, body) == (202, {"accepted": len(batch), "rejected": []})
    return out


def _get(srv: ServerProcess, **params: Any) -> tuple[int, Any]:
    return srv.call("GET", query("/api/v1/metrics", **params))


HOUR = {"from_": iso(DAY), "to": iso(DAY + timedelta(hours=1))}


# --- GET /api/v1/metrics -------------------------------------------------------------------------


def test_every_aggregate_of_one_device(shared_server: ServerProcess, data: DataSet) -> None:
    found = metrics(shared_server, "q-a", agg=ALL_AGGS, start=DAY, end=DAY + timedelta(hours=1))

    assert list(found) == ["humidity", "temperature"]
    _close(found["temperature"], _expected(data.values("temperature", ("q-a",))))
    _close(found["humidity"], _expected(data.values("humidity", ("q-a",))))


def test_whole_fleet_when_no_device_is_named(shared_server: ServerProcess, data: DataSet) -> None:
    status, body = _get(shared_server, sensor="temperature", agg=ALL_AGGS, **HOUR)

    assert status == 200
    assert (body["from"], body["to"]) == ("2024-01-10T10:00:00Z", "2024-01-10T11:00:00Z")
    assert list(body["metrics"]) == ["temperature"]
    _close(body["metrics"]["temperature"], _expected(data.values("temperature", ("q-a", "q-b"))))


def test_default_aggregates_are_count_min_max_avg(shared_server: ServerProcess, data: DataSet) -> None:
    status, body = _get(shared_server, device_id="q-b", **HOUR)
    values = data.values("temperature", ("q-b",))

    assert status == 200
    assert list(body["metrics"]) == ["temperature"]
    _close(
        body["metrics"]["temperature"],
        {"count": 60, "min": min(values), "max": max(values), "avg": statistics.fmean(values)},
    )


def test_sensor_filter_repeatable_and_comma_separated(shared_server: ServerProcess, data: DataSet) -> None:
    repeated = _get(shared_server, sensor=["temperature", "humidity"], device_id="q-a", agg="count", **HOUR)
    commas = _get(shared_server, sensor="temperature,humidity", device_id="q-a", agg="count", **HOUR)
    one = _get(shared_server, sensor="humidity", device_id="q-a", agg="count", **HOUR)

    expected = {"humidity": {"count": 20}, "temperature": {"count": 60}}
    assert repeated[0] == commas[0] == one[0] == 200
    assert repeated[1]["metrics"] == commas[1]["metrics"] == expected
    assert one[1]["metrics"] == {"humidity": {"count": 20}}


def test_sensor_without_data_has_count_zero_and_nulls(shared_server: ServerProcess, data: DataSet) -> None:
    status, body = _get(
        shared_server, sensor="temperature,pressure", device_id="q-a", agg="count,avg,p95", **HOUR
    )

    assert status == 200
    assert body["metrics"]["pressure"] == {"count": 0, "avg": None, "p95": None}
    assert body["metrics"]["temperature"]["count"] == 60


def test_device_filter_repeatable_and_comma_separated(shared_server: ServerProcess, data: DataSet) -> None:
    both = data.values("temperature", ("q-a", "q-b"))
    for devices in (["q-a", "q-b"], "q-a,q-b", ["q-a,q-b", "q-b"]):
        status, body = _get(shared_server, sensor="temperature", device_id=devices, agg="count,sum", **HOUR)
        assert status == 200
        assert body["metrics"]["temperature"]["count"] == 120, devices
        assert body["metrics"]["temperature"]["sum"] == pytest.approx(math.fsum(both), rel=1e-12)

    status, body = _get(shared_server, device_id="nobody-has-this-id", **HOUR)
    assert (status, body["metrics"]) == (200, {})


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-01-10T10:01:00Z", "2024-01-10T10:03:00Z"),
        ("2024-01-10 10:01:00", "2024-01-10 10:03:00"),
        ("2024-01-10T11:01:00+01:00", "2024-01-10T05:03:00-05:00"),
        ("2024-01-10T10:01:00.000000Z", "2024-01-10T10:02:59.999999Z"),
    ],
)
def test_from_inclusive_to_exclusive(
    shared_server: ServerProcess, data: DataSet, start: str, end: str
) -> None:
    """Readings at exactly 10:01:00 count; the one at exactly 10:03:00 does not (nor is it at or
    before 10:02:59.999999)."""
    status, body = _get(
        shared_server, sensor="temperature", device_id="q-a", agg="count,min,max", from_=start, to=end
    )
    values = data.values("temperature", ("q-a",), DAY + timedelta(minutes=1), DAY + timedelta(minutes=3))

    assert status == 200
    assert len(values) == 12
    assert body["metrics"] == {"temperature": {"count": 12, "min": min(values), "max": max(values)}}


def test_empty_range_at_one_instant(shared_server: ServerProcess, data: DataSet) -> None:
    instant = iso(DAY + timedelta(minutes=1))
    status, body = _get(
        shared_server, sensor="temperature", device_id="q-a", agg="count", from_=instant, to=instant
    )

    assert (status, body["metrics"]) == (200, {"temperature": {"count": 0}})


def test_default_range_is_the_last_hour(shared_server: ServerProcess) -> None:
    now = datetime.now(UTC)
    batch = [
        {
            "device_id": "q-recent",
            "timestamp": iso(now - timedelta(minutes=10)),
            "sensor": "temperature",
            "value": 1.0,
        },
        {
            "device_id": "q-recent",
            "timestamp": iso(now - timedelta(minutes=70)),
            "sensor": "temperature",
            "value": 2.0,
        },
    ]
    assert shared_server.call("POST", "/api/v1/telemetry", batch)[0] == 202

    status, body = _get(shared_server, device_id="q-recent", agg="count,max")

    assert (status, body["metrics"]) == (200, {"temperature": {"count": 1, "max": 1.0}})
    start = datetime.fromisoformat(body["from"])
    end = datetime.fromisoformat(body["to"])
    assert end - start == timedelta(hours=1)
    assert abs((end - datetime.now(UTC)).total_seconds()) < 60


def test_times_near_year_1_are_shown_as_rfc_3339(shared_server: ServerProcess) -> None:
    status, body = _get(shared_server, to="0001-01-01T00:30:00Z", device_id="nobody")

    assert (status, body) == (
        200,
        {"from": "0001-01-01T00:00:00Z", "to": "0001-01-01T00:30:00Z", "metrics": {}},
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from_": "yesterday"}, f'from: {TIME_ERROR} "yesterday"'),
        ({"to": "2024-13-01"}, f'to: {TIME_ERROR} "2024-13-01"'),
        (
            {"from_": "2024-01-10T10:00:00"},
            'from: "2024-01-10T10:00:00" has no UTC offset: add "Z" or "+00:00"',
        ),
        (
            {"from_": "2024-01-10T11:00:00Z", "to": "2024-01-10T10:00:00Z"},
            "from (2024-01-10T11:00:00Z) is after to (2024-01-10T10:00:00Z)",
        ),
        (
            {"to": "9999-12-31T23:00:00-05:00"},
            'to: "9999-12-31T23:00:00-05:00" is outside 0001-01-01 to 9999-12-31 UTC',
        ),
        ({"agg": "median"}, f"agg: unknown aggregate(s) median; {AGGS_ERROR}"),
        ({"agg": "count,p42,avg,bogus"}, f"agg: unknown aggregate(s) p42, bogus; {AGGS_ERROR}"),
        ({"agg": ","}, f"agg: unknown aggregate(s) (none given); {AGGS_ERROR}"),
    ],
)
def test_bad_parameters_are_400(shared_server: ServerProcess, params: dict[str, str], message: str) -> None:
    status, body = _get(shared_server, **params)

    assert (status, body) == (400, {"error": {"code": "invalid_input", "message": message, "details": None}})


# --- POST /compute/metrics (seed 004's request, response and errors) ----------------------------

COMPUTE_DAY = datetime(2024, 2, 1, 10, 0, 0, tzinfo=UTC)
"""Only `compute_data` writes here: /compute/metrics aggregates the whole fleet."""


@pytest.fixture(scope="module")
def compute_data(shared_server: ServerProcess) -> dict[str, list[float]]:
    """Temperatures every minute from 10:00 to 10:10 inclusive, and three heart rates."""
    temperatures = [20.0 + (i * 7 % 5) + i / 10 for i in range(11)]
    heart = [61.0, 75.0, 90.0]
    batch = [
        {
            "device_id": f"cm-{i % 3}",
            "timestamp": iso(COMPUTE_DAY + timedelta(minutes=i)),
            "temperature": v,
            "tag": "Thermostat",
        }
        for i, v in enumerate(temperatures)
    ]
    batch += [
        {
            "device_id": "cm-hr",
            "timestamp": iso(COMPUTE_DAY + timedelta(seconds=90 * (i + 1))),
            "heart_rate": v,
            "tag": "HeartRateMeter",
        }
        for i, v in enumerate(heart)
    ]
    # Just outside [10:00:00, 10:10:00]: never counted.
    for t in (COMPUTE_DAY - timedelta(microseconds=1), COMPUTE_DAY + timedelta(minutes=10, microseconds=1)):
        batch.append({"device_id": "cm-x", "timestamp": iso(t), "temperature": 95.0, "tag": "Thermostat"})
    assert shared_server.call("POST", "/api/v1/telemetry", batch)[0] == 202
    return {"temperature": temperatures, "heart_rate": heart}


WINDOW = {"from": "2024-02-01 10:00:00", "to": "2024-02-01 10:10:00"}


def test_compute_metrics_result_with_the_requested_names(
    shared_server: ServerProcess, compute_data: dict[str, list[float]]
) -> None:
    request = {
        "temperature": ["average", "mean", "count", "min", "max"],
        "heart_rate": ["count", "max"],
        **WINDOW,
    }

    status, body = shared_server.call("POST", "/compute/metrics", request)

    temps = compute_data["temperature"]
    assert status == 200
    assert body["errors"] == []
    assert list(body["result"]) == ["temperature", "heart_rate"]
    assert list(body["result"]["temperature"]) == ["average", "mean", "count", "min", "max"]
    assert body["result"]["temperature"]["average"] == pytest.approx(statistics.fmean(temps), rel=1e-12)
    assert body["result"]["temperature"]["mean"] == body["result"]["temperature"]["average"]
    assert (body["result"]["temperature"]["count"], body["result"]["temperature"]["min"]) == (11, min(temps))
    assert body["result"]["temperature"]["max"] == max(temps)
    assert body["result"]["heart_rate"] == {"count": 3, "max": 90.0}


def test_compute_metrics_ends_are_inclusive(
    shared_server: ServerProcess, compute_data: dict[str, list[float]]
) -> None:
    one_minute = {
        "temperature": ["count", "min", "max"],
        "from": "2024-02-01 10:03:00",
        "to": "2024-02-01 10:04:00",
    }
    instant = {"temperature": ["count"], "from": "2024-02-01T10:05:00Z", "to": "2024-02-01T10:05:00Z"}

    temps = compute_data["temperature"]
    assert shared_server.call("POST", "/compute/metrics", one_minute) == (
        200,
        {
            "result": {"temperature": {"count": 2, "min": min(temps[3:5]), "max": max(temps[3:5])}},
            "errors": [],
        },
    )
    assert shared_server.call("POST", "/compute/metrics", instant) == (
        200,
        {"result": {"temperature": {"count": 1}}, "errors": []},
    )


def test_compute_metrics_reports_unknown_metrics_and_keys(
    shared_server: ServerProcess, compute_data: dict[str, list[float]]
) -> None:
    request = {"temperature": ["count", "wrongMetric"], "wrongKey": ["count"], **WINDOW}

    assert shared_server.call("POST", "/compute/metrics", request) == (
        200,
        {
            "result": {"temperature": {"count": 11}},
            "errors": [
                "Unexpected metric wrongMetric to compute for the sensor temperature",
                "Unexpected key wrongKey in the request body",
            ],
        },
    )


def test_compute_metrics_known_sensor_without_data(shared_server: ServerProcess) -> None:
    request = {
        "pressure": ["count", "average", "max"],
        "from": "2001-01-01 00:00:00",
        "to": "2001-01-02 00:00:00",
    }

    assert shared_server.call("POST", "/compute/metrics", request) == (
        200,
        {"result": {"pressure": {"count": 0, "average": None, "max": None}}, "errors": []},
    )


@pytest.mark.parametrize(
    ("request_body", "errors"),
    [
        ({"wrongKey": ["count"], **WINDOW}, ["Unexpected key wrongKey in the request body"]),
        (
            {"temperature": ["wrongMetric"], **WINDOW},
            ["Unexpected metric wrongMetric to compute for the sensor temperature"],
        ),
        ({"temperature": "count", **WINDOW}, ["Expected a list of metrics for the sensor temperature"]),
        (WINDOW, []),
        (
            {"temperature": ["count"], "to": WINDOW["to"]},
            ['Missing from in the request body (expected "YYYY-MM-DD HH:MM:SS")'],
        ),
        (
            {"temperature": ["count"]},
            [
                'Missing from in the request body (expected "YYYY-MM-DD HH:MM:SS")',
                'Missing to in the request body (expected "YYYY-MM-DD HH:MM:SS")',
            ],
        ),
        (
            {"temperature": ["count"], "from": WINDOW["from"], "to": "tomorrow"},
            [f'Invalid to: {TIME_ERROR} "tomorrow"'],
        ),
        (
            {"temperature": ["count"], "from": 1706781600, "to": WINDOW["to"]},
            ['Invalid from: expected "YYYY-MM-DD HH:MM:SS", got 1706781600'],
        ),
        (
            {"temperature": ["count"], "from": WINDOW["to"], "to": WINDOW["from"]},
            ["Invalid range: from is after to"],
        ),
    ],
)
def test_compute_metrics_400_with_empty_result(
    shared_server: ServerProcess,
    compute_data: dict[str, list[float]],
    request_body: dict[str, Any],
    errors: list[str],
) -> None:
    assert shared_server.call("POST", "/compute/metrics", request_body) == (
        400,
        {"result": {}, "errors": errors},
    )


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"[1, 2]", "The request body must be a JSON object"),
        (b"{oops", "The request body is not valid JSON: "),
    ],
)
def test_compute_metrics_400_for_a_body_that_is_not_an_object(
    shared_server: ServerProcess, raw: bytes, error: str
) -> None:
    status, body = shared_server.call("POST", "/compute/metrics", raw=raw)

    assert status == 400
    assert body["result"] == {}
    assert len(body["errors"]) == 1
    assert body["errors"][0].startswith(error)


# --- GET /api/v1/stats/live ----------------------------------------------------------------------


def test_live_stats_after_known_data(shared_server: ServerProcess, dev: str) -> None:
    """Count, mean, min, max, stddev, and `last` = the value of the newest event time, even when an
    older reading arrives after it."""
    sensor = f"probe_{dev}"
    base = datetime(2024, 3, 1, tzinfo=UTC)
    sends = [  # (device, seconds after base, value), in arrival order
        (f"{dev}-1", 10, 5.0),
        (f"{dev}-1", 0, 1.0),
        (f"{dev}-2", 5, 3.0),
        (f"{dev}-1", -60, 100.0),  # oldest, arrives last
        (f"{dev}-2", 20, -2.5),
    ]
    for device, seconds, value in sends:
        item = {
            "device_id": device,
            "timestamp": iso(base + timedelta(seconds=seconds)),
            "sensor": sensor,
            "value": value,
        }
        assert shared_server.call("POST", "/api/v1/telemetry", item)[0] == 202

    status, body = shared_server.call(
        "GET", query("/api/v1/stats/live", sensor=sensor, device_id=[f"{dev}-1", f"{dev}-2"])
    )

    def expected(rows: list[tuple[str, int, float]]) -> dict[str, Any]:
        values = [v for _, _, v in rows]
        newest = max(rows, key=lambda r: r[1])
        return {
            "count": len(values),
            "mean": statistics.fmean(values),
            "min": min(values),
            "max": max(values),
            "stddev": statistics.stdev(values),
            "last": newest[2],
            "last_ts": iso(base + timedelta(seconds=newest[1])),
        }

    assert status == 200
    assert list(body["sensors"]) == [sensor]
    # "late" depends on what other tests sent this shared server first (their event times).
    _close({k: v for k, v in body["sensors"][sensor].items() if k != "late"}, expected(sends))
    assert body["sensors"][sensor]["last"] == -2.5
    assert sorted(body["devices"]) == [f"{dev}-1", f"{dev}-2"]
    for device in (f"{dev}-1", f"{dev}-2"):
        assert list(body["devices"][device]) == [sensor]
        _close(body["devices"][device][sensor], expected([s for s in sends if s[0] == device]))
    assert body["devices"][f"{dev}-1"][sensor]["last"] == 5.0  # not the 100.0 that arrived later


def test_live_stats_single_reading_has_no_stddev(shared_server: ServerProcess, dev: str) -> None:
    sensor = f"probe_{dev}"
    item = {"device_id": dev, "timestamp": "2024-03-02T00:00:00Z", "sensor": sensor, "value": 7.5}
    assert shared_server.call("POST", "/api/v1/telemetry", item)[0] == 202

    status, body = shared_server.call("GET", query("/api/v1/stats/live", sensor=sensor))

    assert status == 200
    assert list(body["sensors"]) == [sensor]
    assert {k: v for k, v in body["sensors"][sensor].items() if k != "late"} == {
        "count": 1,
        "mean": 7.5,
        "min": 7.5,
        "max": 7.5,
        "stddev": None,
        "last": 7.5,
        "last_ts": "2024-03-02T00:00:00Z",
    }
    assert "devices" not in body
