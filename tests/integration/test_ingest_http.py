"""Ingest over real HTTP into a real DuckDB file: every input shape, every refusal, and nothing lost
beside a bad item."""

from __future__ import annotations

import json
import statistics
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ._support import (
    DEVICE_ID_RULE,
    T0,
    ServerProcess,
    at,
    db_path,
    metrics,
    path_segment,
    read_db,
    reading,
    stop_cleanly,
)

pytestmark = pytest.mark.integration

NDJSON = "application/x-ndjson"
T0_US = int(T0.timestamp()) * 1_000_000
EARLIEST = datetime.min.replace(tzinfo=UTC)


def _us(seconds: float) -> int:
    return T0_US + round(seconds * 1_000_000)


def _ok(accepted: int, rejected: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"accepted": accepted, "rejected": rejected or []}


def _none_valid(
    rejected: list[dict[str, Any]], message: str = "no valid message in the request"
) -> dict[str, Any]:
    return {
        "accepted": 0,
        "rejected": rejected,
        "error": {"code": "invalid_reading", "message": message, "details": None},
    }


def _stats(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "min": min(values), "max": max(values), "avg": statistics.fmean(values)}


# --- every accepted shape ------------------------------------------------------------------------


def test_single_canonical_message_is_stored(shared_server: ServerProcess, dev: str) -> None:
    status, body = shared_server.call("POST", "/api/v1/telemetry", reading(dev, 0, 25.2))

    assert (status, body) == (202, _ok(1))
    assert metrics(shared_server, dev) == {"temperature": _stats([25.2])}


def test_json_array_is_one_batch(shared_server: ServerProcess, dev: str) -> None:
    values = [20.5, 21.0, 23.25]
    batch = [reading(dev, i, v) for i, v in enumerate(values)]

    assert shared_server.call("POST", "/api/v1/telemetry", batch) == (202, _ok(3))
    assert metrics(shared_server, dev) == {"temperature": _stats(values)}


def test_readings_object_is_one_batch(shared_server: ServerProcess, dev: str) -> None:
    batch = {"readings": [reading(dev, 0, 1.5), reading(dev, 1, 2.5, sensor="humidity")]}

    assert shared_server.call("POST", "/api/v1/telemetry", batch) == (202, _ok(2))
    assert metrics(shared_server, dev) == {"humidity": _stats([2.5]), "temperature": _stats([1.5])}


def test_ndjson_one_message_per_line(shared_server: ServerProcess, dev: str) -> None:
    lines = [json.dumps(reading(dev, i, 10.0 + i)) for i in range(4)]
    raw = ("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n").encode()  # a blank line is fine

    assert shared_server.call("POST", "/api/v1/telemetry", raw=raw, content_type=NDJSON) == (202, _ok(4))
    assert metrics(shared_server, dev) == {"temperature": _stats([10.0, 11.0, 12.0, 13.0])}


def test_ndjson_bad_line_costs_only_itself(shared_server: ServerProcess, dev: str) -> None:
    first = json.dumps(reading(dev, 0, 1.0))
    raw = "\n".join(
        [first, '{"device_id": oops}', "", json.dumps(reading(dev, 1, "abc")), '{"device_id": "x"']
    ).encode()
    oops = len(first) + 1 + len('{"device_id": ')  # byte of the "o" in the body
    end = len(raw)

    status, body = shared_server.call("POST", "/api/v1/telemetry", raw=raw, content_type=NDJSON)

    # Indexes count messages (the blank line is none); `line` and the message point into the body.
    assert (status, body) == (
        202,
        _ok(
            1,
            [
                {
                    "index": 1,
                    "line": 2,
                    "error": f"malformed JSON at line 2, column 15 (byte {oops}): invalid character",
                },
                {"index": 2, "error": 'value: expected a finite number, got "abc"'},
                {
                    "index": 3,
                    "line": 5,
                    "error": f"malformed JSON at line 5, column 18 (byte {end}): input data was truncated",
                },
            ],
        ),
    )
    assert metrics(shared_server, dev) == {"temperature": _stats([1.0])}


@pytest.mark.parametrize(
    ("tag", "sensor", "device_type"),
    [
        ("Thermostat", "temperature", "Thermostat"),
        ("Barometer", "pressure", "Barometer"),
        ("Hygrometer", "humidity", "Hygrometer"),
        ("Heart Rate Meter", "heart_rate", "Heart Rate Meter"),
        ("HeartRateMeter", "heart_rate", "Heart Rate Meter"),
    ],
)
def test_typed_device_messages(
    shared_server: ServerProcess, dev: str, tag: str, sensor: str, device_type: str
) -> None:
    values = [1010.0, 1022.5] if sensor == "pressure" else [60.0, 72.5]  # inside each type's range
    batch = [{"device_id": dev, "timestamp": at(i), sensor: v, "tag": tag} for i, v in enumerate(values)]

    assert shared_server.call("POST", "/api/v1/telemetry", batch) == (202, _ok(2))
    assert metrics(shared_server, dev) == {sensor: _stats(values)}


def test_event_envelopes(shared_server: ServerProcess, dev: str) -> None:
    batch = [
        {"device_id": dev, "type": "startup", "ts": at(0)},
        {
            "device_id": dev,
            "type": "heartbeat",
            "ts": at(1),
            "event": {"cpu_usage": "79.12", "mem_usage": "10.75"},
        },
        {"device_id": dev, "type": "heartbeat", "ts": at(2), "event": {"cpu_usage": 20, "mem_usage": 11.25}},
        {"device_id": dev, "type": "temperature", "ts": at(3), "event": {"temperature": "21.5"}},
    ]

    assert shared_server.call("POST", "/api/v1/telemetry", batch) == (202, _ok(4))
    assert metrics(shared_server, dev) == {
        "cpu_usage": _stats([79.12, 20.0]),
        "mem_usage": _stats([10.75, 11.25]),
        "temperature": _stats([21.5]),
    }


def test_event_types_in_any_case(shared_server: ServerProcess, dev: str) -> None:
    batch = [
        {"device_id": dev, "type": "Startup", "ts": at(0)},
        {"device_id": dev, "type": "STARTUP", "ts": at(1)},
        {"device_id": dev, "type": "Heartbeat", "ts": at(2), "event": {"cpu_usage": 1, "mem_usage": 2}},
        {"device_id": dev, "type": "Temperature", "ts": at(3), "event": {"temperature": 4}},
    ]

    assert shared_server.call("POST", "/api/v1/telemetry", batch) == (202, _ok(4))
    assert metrics(shared_server, dev, agg="count") == {
        "cpu_usage": {"count": 1},
        "mem_usage": {"count": 1},
        "temperature": {"count": 1},
    }


def test_integer_device_ids_become_text(shared_server: ServerProcess, dev: str) -> None:
    number = 900_000 + abs(hash(dev)) % 100_000
    batch = [
        {"device_id": number, "timestamp": at(0), "sensor": "temperature", "value": 3.0},
        {"device_id": number, "type": "heartbeat", "ts": at(1), "event": {"cpu_usage": 5, "mem_usage": 6}},
    ]

    assert shared_server.call("POST", "/api/v1/telemetry", batch) == (202, _ok(2))
    found = metrics(shared_server, str(number))
    assert found == {"cpu_usage": _stats([5.0]), "mem_usage": _stats([6.0]), "temperature": _stats([3.0])}


def test_ts_synonym_and_epoch_timestamps_land_at_the_same_instant(
    shared_server: ServerProcess, dev: str
) -> None:
    instant = T0 + timedelta(minutes=4, seconds=22)  # 2023-03-28T20:04:22Z = 1680033862 s
    assert int(instant.timestamp()) == 1_680_033_862
    batch = [
        {"device_id": dev, "ts": "2023-03-28T20:04:22Z", "sensor": "a", "value": 1},
        {"device_id": dev, "timestamp": 1_680_033_862_000, "sensor": "b", "value": 2},  # epoch ms
        {"device_id": dev, "timestamp": 1_680_033_862, "sensor": "c", "value": 3},  # epoch s
        {"device_id": dev, "timestamp": "2023-03-28T22:04:22+02:00", "sensor": "d", "value": 4},
    ]

    assert shared_server.call("POST", "/api/v1/telemetry", batch) == (202, _ok(4))
    # All four at exactly 20:04:22: inside [20:04:22, 20:04:22.000001), outside [.., 20:04:22).
    at_instant = metrics(
        shared_server, dev, agg="count", start=instant, end=instant + timedelta(microseconds=1)
    )
    before = metrics(shared_server, dev, agg="count", start=T0, end=instant)
    assert at_instant == {s: {"count": 1} for s in "abcd"}
    assert before == {}


@pytest.mark.parametrize(
    ("sent", "instant"),
    [
        ("1969-12-31T23:59:59.500000Z", datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)),
        ("1970-01-01T00:59:59.250000+01:00", datetime(1969, 12, 31, 23, 59, 59, 250_000, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("2023-03-28T20:04:22.999999Z", datetime(2023, 3, 28, 20, 4, 22, 999_999, tzinfo=UTC)),
    ],
)
def test_event_time_is_kept_to_the_microsecond(
    shared_server: ServerProcess, dev: str, sent: str, instant: datetime
) -> None:
    """Whatever the path a batch takes (one canonical batch, or mixed formats), the same instant."""
    canonical = [{"device_id": dev, "timestamp": sent, "sensor": "a", "value": 1.0}]
    mixed = [
        {"device_id": dev, "timestamp": sent, "sensor": "b", "value": 2.0},
        {"device_id": dev, "type": "temperature", "ts": sent, "event": {"temperature": 3.0}},
    ]
    assert shared_server.call("POST", "/api/v1/telemetry", canonical) == (202, _ok(1))
    assert shared_server.call("POST", "/api/v1/telemetry", mixed) == (202, _ok(2))

    one_us = timedelta(microseconds=1)
    at_instant = metrics(shared_server, dev, agg="count", start=instant, end=instant + one_us)
    before = metrics(
        shared_server,
        dev,
        agg="count",
        start=instant - min(timedelta(days=1), instant - EARLIEST),
        end=instant,
    )
    assert at_instant == {"a": {"count": 1}, "b": {"count": 1}, "temperature": {"count": 1}}
    assert before == {}


def test_time_outside_year_1_to_9999_is_refused_and_harms_nothing(
    shared_server: ServerProcess, dev: str
) -> None:
    """Year 0 in UTC could be stored but never shown: live stats would fail on it for everyone."""
    sensor = f"odd_{dev}"
    item = {"device_id": dev, "timestamp": "0001-01-01T00:00:00+05:00", "sensor": sensor, "value": 1.0}

    status, body = shared_server.call("POST", "/api/v1/telemetry", [item, reading(dev, 0, 2.0)])

    error = 'timestamp: "0001-01-01T00:00:00+05:00" is outside 0001-01-01 to 9999-12-31 UTC'
    assert (status, body) == (202, _ok(1, [{"index": 0, "error": error}]))
    status, body = shared_server.call("GET", f"/api/v1/stats/live?sensor={sensor}")
    assert (status, body["sensors"]) == (200, {})


def test_device_ids_with_bang_and_at(shared_server: ServerProcess, dev: str) -> None:
    device = f"DevFor!x@{dev}"
    status, body = shared_server.call("POST", "/api/v1/telemetry", reading(device, 0, 21.0))

    assert (status, body) == (202, _ok(1))
    assert metrics(shared_server, device) == {"temperature": _stats([21.0])}


def test_device_id_of_128_characters_is_the_longest(shared_server: ServerProcess, dev: str) -> None:
    longest = (dev + ":" + "9" * 128)[:128]
    batch = [reading(longest, 0, 1.0), reading(longest + "9", 0, 2.0)]

    status, body = shared_server.call("POST", "/api/v1/telemetry", batch)

    assert status == 202
    assert (body["accepted"], [r["index"] for r in body["rejected"]]) == (1, [1])
    assert metrics(shared_server, longest) == {"temperature": _stats([1.0])}


def test_device_endpoint_takes_ndjson(shared_server: ServerProcess, dev: str) -> None:
    raw = b'{"timestamp": "2023-03-28T20:00:00Z", "humidity": 41, "tag": "Hygrometer"}\n'
    raw += b'{"ts": 1680033600500, "sensor": "humidity", "value": 43}\n'

    status, body = shared_server.call(
        "POST", f"/api/v1/devices/{dev}/telemetry", raw=raw, content_type=NDJSON
    )

    assert (status, body) == (202, _ok(2))
    assert metrics(shared_server, dev) == {"humidity": _stats([41.0, 43.0])}


def test_device_endpoint_fills_and_checks_the_id(shared_server: ServerProcess, dev: str) -> None:
    device = f"DevFor!x@{dev}"
    batch = [
        {"timestamp": at(0), "sensor": "temperature", "value": 1.0},
        {"device_id": device, "timestamp": at(1), "sensor": "temperature", "value": 2.0},
        {"device_id": "someone-else", "timestamp": at(2), "sensor": "temperature", "value": 3.0},
        {"timestamp": at(3), "temperature": 4.0, "tag": "Thermostat"},
    ]

    status, body = shared_server.call("POST", f"/api/v1/devices/{device}/telemetry", batch)

    assert (status, body) == (
        202,
        _ok(
            3,
            [
                {
                    "index": 2,
                    "error": f'device_id: "someone-else" does not match the device in the URL ({device})',
                }
            ],
        ),
    )
    assert metrics(shared_server, device) == {"temperature": _stats([1.0, 2.0, 4.0])}
    assert metrics(shared_server, "someone-else") == {}


@pytest.mark.parametrize("bad", ["a b", "a/b"])
def test_device_endpoint_refuses_a_bad_id(shared_server: ServerProcess, bad: str) -> None:
    status, body = shared_server.call(
        "POST", f"/api/v1/devices/{path_segment(bad)}/telemetry", reading(bad, 0, 1.0)
    )

    assert status == 422
    assert body["error"]["message"] == f'device_id: "{bad}" is not a valid device id ({DEVICE_ID_RULE})'


def test_every_shape_is_stored_normalised(start: Any) -> None:
    """Each shape ends as exact rows of the DuckDB file: device, event time, sensor, value, unit, type."""
    srv = start()
    batch = [
        {"device_id": "c-1", "timestamp": at(0), "sensor": "temperature", "value": 25.2},
        {
            "device_id": "c-1",
            "ts": at(1),
            "sensor": "voltage",
            "value": 3,
            "unit": "V",
            "device_type": "Probe",
        },
        {"device_id": 7, "timestamp": 1_680_033_862_000, "temperature": 21.5, "tag": "Thermostat"},
        {"device_id": "b-1", "timestamp": 1_680_033_862.5, "pressure": 1060.5, "tag": "Barometer"},
        {"device_id": "h-1", "timestamp": at(2), "humidity": 40, "tag": "Hygrometer"},
        {"device_id": "hr-1", "timestamp": at(3), "heart_rate": 61, "tag": "Heart Rate Meter"},
        {"device_id": "hr-1", "timestamp": at(4), "heart_rate": 62, "tag": "HeartRateMeter"},
        {"device_id": 1, "type": "startup", "ts": at(5)},
        {
            "device_id": 1,
            "type": "heartbeat",
            "ts": at(6),
            "event": {"cpu_usage": "79.12", "mem_usage": "10.75"},
        },
        {"device_id": 1, "type": "temperature", "ts": at(7), "event": {"temperature": 30}},
        {"device_id": "DevFor!x@0000000001", "timestamp": at(8), "sensor": "temperature", "value": -4},
    ]
    assert srv.call("POST", "/api/v1/telemetry", batch) == (202, _ok(11))
    stop_cleanly(srv)

    rows = read_db(
        db_path(srv),
        "SELECT device_id, epoch_us(ts), sensor, value, unit, device_type, msg_id FROM readings ORDER BY ALL",
    )
    events = read_db(db_path(srv), "SELECT device_id, epoch_us(ts), kind, device_type FROM device_messages")

    expected = [
        ("c-1", _us(0), "temperature", 25.2, "°C", "Sensor", None),
        ("c-1", _us(1), "voltage", 3.0, "V", "Probe", None),
        ("7", 1_680_033_862_000_000, "temperature", 21.5, "°C", "Thermostat", None),
        ("b-1", 1_680_033_862_500_000, "pressure", 1060.5, "hPa", "Barometer", None),
        ("h-1", _us(2), "humidity", 40.0, "%", "Hygrometer", None),
        ("hr-1", _us(3), "heart_rate", 61.0, "bpm", "Heart Rate Meter", None),
        ("hr-1", _us(4), "heart_rate", 62.0, "bpm", "Heart Rate Meter", None),
        ("1", _us(6), "cpu_usage", 79.12, "%", "Host Monitor", None),
        ("1", _us(6), "mem_usage", 10.75, "%", "Host Monitor", None),
        ("1", _us(7), "temperature", 30.0, "°C", "Host Monitor", None),
        ("DevFor!x@0000000001", _us(8), "temperature", -4.0, "°C", "Sensor", None),
    ]
    assert rows == sorted(expected)
    assert events == [("1", _us(5), "startup", "Host Monitor")]


# --- per-item rejections ------------------------------------------------------------------------

BAD_ITEMS: list[tuple[str, dict[str, Any] | int, str]] = [
    ("text value", {"sensor": "temperature", "value": "abc"}, 'value: expected a finite number, got "abc"'),
    ("infinite", {"sensor": "temperature", "value": "inf"}, 'value: expected a finite number, got "inf"'),
    ("boolean", {"sensor": "temperature", "value": True}, "value: expected a finite number, got true"),
    ("no value", {"value": None}, "value: required"),
    ("empty sensor", {"sensor": "", "value": 1}, 'sensor: expected a non-empty string, got ""'),
    (
        "no offset",
        {"timestamp": "2023-03-28T20:04:22"},
        'timestamp: "2023-03-28T20:04:22" has no UTC offset: add "Z" or "+00:00"',
    ),
    (
        "no offset ts",
        {"timestamp": None, "ts": "2023-03-28T20:04:22"},
        'ts: "2023-03-28T20:04:22" has no UTC offset: add "Z" or "+00:00"',
    ),
    (
        "not a time",
        {"timestamp": "yesterday"},
        'timestamp: expected RFC 3339 text such as "2023-03-28T20:04:22Z", got "yesterday"',
    ),
    ("space in id", {"device_id": "a b"}, f'device_id: "a b" is not a valid device id ({DEVICE_ID_RULE})'),
    ("slash in id", {"device_id": "a/b"}, f'device_id: "a/b" is not a valid device id ({DEVICE_ID_RULE})'),
    (
        "id too long",
        {"device_id": "x" * 129},
        f'device_id: "{"x" * 56}... is not a valid device id ({DEVICE_ID_RULE})',
    ),
    ("float id", {"device_id": 1.5}, "device_id: expected a string or integer, got 1.5"),
    ("not an object", 5, "expected a JSON object, got 5"),
    ("unknown tag", {"tag": "Toaster", "sensor": None}, "tag: unknown device type"),
    (
        "unknown event",
        {"type": "reboot", "event": {}, "sensor": None},
        "type: expected one of startup, heartbeat, temperature, got",
    ),
    (
        "heartbeat half",
        {"type": "heartbeat", "event": {"cpu_usage": 1}, "sensor": None},
        "event.mem_usage: required for a heartbeat event",
    ),
]


@pytest.mark.parametrize(("case", "change", "error"), BAD_ITEMS, ids=[c for c, _, _ in BAD_ITEMS])
def test_bad_item_beside_good_ones(
    shared_server: ServerProcess, dev: str, case: str, change: dict[str, Any] | int, error: str
) -> None:
    """A bad item is reported by index with the field and the reason; its neighbours are stored."""
    if isinstance(change, dict):
        bad: Any = {k: v for k, v in {**reading(dev, 5, 1.0), **change}.items() if v is not None}
        if "tag" in change or "type" in change:
            bad.pop("value")
    else:
        bad = change
    batch = [reading(dev, 0, 10.0), bad, reading(dev, 1, 30.0)]

    status, body = shared_server.call("POST", "/api/v1/telemetry", batch)

    assert status == 202, body
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1]
    message = body["rejected"][0]["error"]
    if case.startswith(("unknown", "heartbeat")):
        assert message.startswith(error), message
    else:
        assert message == error
    assert metrics(shared_server, dev) == {"temperature": _stats([10.0, 30.0])}


def test_far_future_timestamp_is_refused(shared_server: ServerProcess, dev: str) -> None:
    future = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    near = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    batch = [
        {"device_id": dev, "timestamp": future, "sensor": "temperature", "value": 1.0},
        {"device_id": dev, "timestamp": near, "sensor": "temperature", "value": 2.0},
    ]

    status, body = shared_server.call("POST", "/api/v1/telemetry", batch)

    assert (status, body) == (
        202,
        _ok(1, [{"index": 0, "error": f'timestamp: "{future}" is more than 24 h ahead of the server clock'}]),
    )
    now = datetime.now(UTC)
    assert metrics(shared_server, dev, start=now - timedelta(days=1), end=now + timedelta(days=3)) == {
        "temperature": _stats([2.0])
    }


def test_nothing_valid_is_422_with_the_same_body(shared_server: ServerProcess, dev: str) -> None:
    batch = [reading(dev, 0, "abc"), reading("a b", 1, 1.0)]

    status, body = shared_server.call("POST", "/api/v1/telemetry", batch)

    assert (status, body) == (
        422,
        _none_valid(
            [
                {"index": 0, "error": 'value: expected a finite number, got "abc"'},
                {"index": 1, "error": f'device_id: "a b" is not a valid device id ({DEVICE_ID_RULE})'},
            ]
        ),
    )
    assert metrics(shared_server, dev) == {}


def test_empty_batch_is_422(shared_server: ServerProcess) -> None:
    assert shared_server.call("POST", "/api/v1/telemetry", []) == (422, _none_valid([], "the batch is empty"))


def test_unrecognised_object_says_what_is_expected(shared_server: ServerProcess) -> None:
    status, body = shared_server.call("POST", "/api/v1/telemetry", {"hello": "world"})

    assert status == 422
    assert [r["index"] for r in body["rejected"]] == [0]
    assert body["rejected"][0]["error"].startswith("not a recognised message; expected one of: ")
    for name in ("canonical", "typed", "envelope"):
        assert name in body["rejected"][0]["error"]


# --- whole-request refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"device_id": "x",\n "value": 1,,}',
            "malformed JSON at line 2, column 13 (byte 31): object keys must be strings",
        ),
        (b'[{"device_id": "x"}\n', "malformed JSON at line 2, column 1 (byte 20): input data was truncated"),
        (b'{"a" 1}', "malformed JSON at line 1, column 6 (byte 5): expected ':'"),
    ],
)
def test_malformed_json_says_line_and_column(shared_server: ServerProcess, raw: bytes, message: str) -> None:
    status, body = shared_server.call("POST", "/api/v1/telemetry", raw=raw)

    assert status == 400
    assert body == {"error": {"code": "malformed_body", "message": message, "details": None}}


def test_empty_body_is_400(shared_server: ServerProcess) -> None:
    status, body = shared_server.call("POST", "/api/v1/telemetry", raw=b"  ")

    assert status == 400
    assert body["error"]["code"] == "malformed_body"
    assert body["error"]["message"].startswith("empty body")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x"])
def test_unsupported_content_type_is_415(shared_server: ServerProcess, dev: str, content_type: str) -> None:
    raw = json.dumps(reading(dev, 0, 1.0)).encode()

    status, body = shared_server.call("POST", "/api/v1/telemetry", raw=raw, content_type=content_type)

    assert status == 415
    assert body["error"]["code"] == "unsupported_media_type"
    media = content_type.split(";")[0]
    assert body["error"]["message"].startswith(f"unsupported Content-Type '{media}': send application/json")
    assert metrics(shared_server, dev) == {}


def test_json_with_charset_is_json(shared_server: ServerProcess, dev: str) -> None:
    raw = json.dumps(reading(dev, 0, 1.0)).encode()
    ok = shared_server.call(
        "POST", "/api/v1/telemetry", raw=raw, content_type="application/json; charset=utf-8"
    )
    assert ok == (202, _ok(1))


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, launch_server: Any) -> Iterator[ServerProcess]:
    """A server with a 1000-byte body limit and a 5-item batch limit."""
    env = {"FLEETSTREAM_INGEST__MAX_BODY_BYTES": "1000", "FLEETSTREAM_INGEST__MAX_BATCH_ITEMS": "5"}
    srv = launch_server(tmp_path_factory.mktemp("limited") / "data", "--no-simulator", env=env)
    try:
        yield srv
    finally:
        srv.stop()


def _padded(item: dict[str, Any], size: int) -> bytes:
    raw = json.dumps(item).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def test_body_at_the_limit_is_accepted_one_byte_over_is_413(limited: ServerProcess, dev: str) -> None:
    assert limited.call("POST", "/api/v1/telemetry", raw=_padded(reading(dev, 0, 1.0), 1000)) == (202, _ok(1))

    status, body = limited.call("POST", "/api/v1/telemetry", raw=_padded(reading(dev, 1, 2.0), 1001))

    assert status == 413
    assert body == {
        "error": {
            "code": "payload_too_large",
            "message": "body of 1001 bytes is over the limit of 1000",
            "details": None,
        }
    }
    assert metrics(limited, dev) == {"temperature": _stats([1.0])}


def test_chunked_body_over_the_limit_is_413(limited: ServerProcess, dev: str) -> None:
    raw = _padded(reading(dev, 0, 1.0), 1500)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 100):
            yield raw[i : i + 100]

    response = httpx.post(
        f"{limited.url}/api/v1/telemetry",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )

    assert response.status_code == 413
    assert response.json()["error"]["message"] == "body is over the limit of 1000 bytes"
    assert metrics(limited, dev) == {}


@pytest.mark.parametrize("kind", ["json", "ndjson"])
def test_batch_over_the_item_limit_is_413(limited: ServerProcess, dev: str, kind: str) -> None:
    five = [reading(dev, i, float(i)) for i in range(5)]
    six = [reading(dev, 10 + i, 100.0) for i in range(6)]

    def send(items: list[dict[str, Any]]) -> tuple[int, Any]:
        if kind == "json":
            return limited.call("POST", "/api/v1/telemetry", items)
        raw = "\n".join(json.dumps(i, separators=(",", ":")) for i in items).encode()
        return limited.call("POST", "/api/v1/telemetry", raw=raw, content_type=NDJSON)

    assert send(five) == (202, _ok(5))
    status, body = send(six)

    assert status == 413
    assert body == {
        "error": {
            "code": "payload_too_large",
            "message": "batch of 6 messages is over the limit of 5: split it",
            "details": {"items": 6, "max_items": 5},
        }
    }
    assert metrics(limited, dev) == {"temperature": _stats([0.0, 1.0, 2.0, 3.0, 4.0])}


def test_full_queue_is_refused_with_503_and_retry_after(start: Any, dev: str) -> None:
    """Overload is refused, not absorbed: with room for 50 waiting readings, 8 clients sending 40 at
    a time overflow it; the refused get 503 + Retry-After and nothing of theirs is stored."""
    srv = start(
        env={"FLEETSTREAM_INGEST__QUEUE_MAX_RECORDS": "50", "FLEETSTREAM_INGEST__MAX_BATCH_ITEMS": "50"}
    )
    answers: list[tuple[int, str | None, list[dict[str, Any]]]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(timeout=10) as http:
            for n in range(25):
                batch = [reading(f"{dev}-{c}", n * 40 + i, float(i)) for i in range(40)]
                response = http.post(f"{srv.url}/api/v1/telemetry", json=batch)
                with lock:
                    answers.append((response.status_code, response.headers.get("retry-after"), batch))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = [status for status, _, _ in answers]
    assert len(statuses) == 200
    assert set(statuses) == {202, 503}
    assert {retry for status, retry, _ in answers if status == 503} == {"1"}
    accepted = [item for status, _, batch in answers if status == 202 for item in batch]
    found = metrics(srv, [f"{dev}-{c}" for c in range(8)], agg="count")
    assert found == {"temperature": {"count": len(accepted)}}
