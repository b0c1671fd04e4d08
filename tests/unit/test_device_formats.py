"""Host records, tracker records and the range check of every built-in device type."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetstream.ingest.decode import Decoded, decode_body
from fleetstream.ingest.devicetypes import BUILT_IN, by_tag, range_of
from fleetstream.ingest.formats import DecodeContext

NOW = 1_700_000_000_000_000
CTX = DecodeContext(NOW, 86_400_000_000)
FLAG = replace(CTX, out_of_range="flag")
T = "2023-03-28T20:04:22Z"
T_US = 1_680_033_862_000_000


def decode(items: object, ctx: DecodeContext = CTX, *, fast: bool = True) -> Decoded:
    return decode_body(json.dumps(items).encode(), "json", ctx, 1000, fast=fast)


def test_host_record_one_reading_per_sensor_named_by_kind_and_name() -> None:
    out = decode(
        {
            "device_id": "pc-1",
            "ts": T,
            "sensors": [
                {"type": "Temperature", "name": "CPU Core #1", "value": 61.0},
                {"type": "Power", "name": "CPU Package", "value": "35.5"},
                {"type": "load", "name": "CPU Package", "value": 12},
                {"type": "Voltage", "name": "+12V", "value": 12.1},
                {"type": "Fan", "name": "Case", "value": 30},
                {"type": "Clock", "value": 3.4},
            ],
        }
    )
    assert out.rejected == []
    (m,) = out.messages
    assert (m.device_id, m.ts, m.device_type) == ("pc-1", T_US, "Host Monitor")
    assert [(r.sensor, r.value, r.unit) for r in m.readings] == [
        ("temperature/CPU Core #1", 61.0, "°C"),
        ("power/CPU Package", 35.5, "W"),
        ("load/CPU Package", 12.0, "%"),
        ("voltage/+12V", 12.1, "V"),
        ("fan/Case", 30.0, "CFM"),
        ("clock", 3.4, "GHz"),
    ]


@pytest.mark.parametrize(
    ("sensors", "error"),
    [
        ([], "sensors: expected a non-empty array of sensors, got []"),
        (
            [{"type": "Humidity", "value": 1}],
            'sensors[0].type: expected one of Temperature, Power, Load, Voltage, Fan, Clock, got "Humidity"',
        ),
        ([{"type": "Load", "value": 1}, {"type": "Load"}], "sensors[1].value: required"),
        ([{"type": "Load", "value": "x"}], 'sensors[0].value: expected a finite number, got "x"'),
        ([{"type": "Load", "value": 101}], "load: 101 is outside the Host Monitor range 0..100 %"),
        (
            [{"type": "Temperature", "name": "GPU", "value": 900}],
            "temperature/GPU: 900 is outside the Host Monitor range -40..150 °C",
        ),
        ([3], "sensors[0]: expected an object, got 3"),
    ],
)
def test_bad_host_record_is_rejected_alone(sensors: list[object], error: str) -> None:
    good = {"device_id": "pc-1", "ts": T, "sensors": [{"type": "Load", "value": 5}]}
    out = decode([good, {"device_id": "pc-1", "ts": T, "sensors": sensors}])
    assert out.rejected == [{"index": 1, "error": error}]
    assert len(out.messages) == 1


def test_tracker_record_is_one_message_with_position_and_temperature() -> None:
    out = decode({"device_id": "t-9", "ts": T, "latitude": 52.37, "longitude": 4.89, "temperature": 4.1})
    (m,) = out.messages
    assert (m.device_id, m.ts, m.device_type) == ("t-9", T_US, "Tracker")
    assert [(r.sensor, r.value, r.unit) for r in m.readings] == [
        ("latitude", 52.37, "°"),
        ("longitude", 4.89, "°"),
        ("temperature", 4.1, "°C"),
    ]


def test_tracker_errors() -> None:
    out = decode(
        [
            {"device_id": "t-1", "ts": T, "latitude": 52.0},
            {"device_id": "t-1", "ts": T, "latitude": 91.0, "longitude": 4.0},
            {"device_id": "t-1", "ts": T, "latitude": 52.0, "longitude": 4.0},
        ]
    )
    assert out.rejected == [
        {"index": 0, "error": "longitude: required (a tracker sends latitude and longitude together)"},
        {"index": 1, "error": "latitude: 91 is outside the Tracker range -90..90 °"},
    ]
    assert [r.sensor for r in out.messages[0].readings] == ["latitude", "longitude"]


@pytest.mark.parametrize("fast", [True, False])
def test_out_of_range_rejected_with_the_range_on_both_paths(fast: bool) -> None:
    out = decode(
        [
            {"device_id": "a", "timestamp": T, "temperature": 21.0, "tag": "Thermostat"},
            {"device_id": "a", "timestamp": T, "temperature": 900, "tag": "Thermostat"},
            {
                "device_id": "a",
                "timestamp": T,
                "sensor": "heart_rate",
                "value": 400,
                "device_type": "Heart Rate Meter",
            },
            {"device_id": "a", "timestamp": T, "sensor": "heart_rate", "value": 400},
        ],
        fast=fast,
    )
    assert out.rejected == [
        {"index": 1, "error": "temperature: 900 is outside the Thermostat range -50..100 °C"},
        {"index": 2, "error": "heart_rate: 400 is outside the Heart Rate Meter range 20..300 bpm"},
    ]
    # A plain Sensor has no range: any finite value stands.
    assert [(m.readings[0].value, m.device_type) for m in out.messages] == [
        (21.0, "Thermostat"),
        (400.0, "Sensor"),
    ]


@pytest.mark.parametrize("fast", [True, False])
def test_flag_mode_accepts_and_counts(fast: bool) -> None:
    out = decode(
        [
            {"device_id": "a", "timestamp": T, "temperature": 900, "tag": "Thermostat"},
            {"device_id": "a", "timestamp": T, "pressure": 1013, "tag": "Barometer"},
            {"device_id": "a", "timestamp": T, "pressure": 5, "tag": "Barometer"},
        ],
        FLAG,
        fast=fast,
    )
    assert out.rejected == []
    assert [m.readings[0].value for m in out.messages] == [900.0, 1013.0, 5.0]
    assert out.flagged == 2


def test_range_bounds_are_inclusive() -> None:
    out = decode(
        [
            {"device_id": "a", "timestamp": T, "humidity": 0, "tag": "Hygrometer"},
            {"device_id": "a", "timestamp": T, "humidity": 100, "tag": "Hygrometer"},
            {"device_id": "a", "timestamp": T, "humidity": 100.001, "tag": "Hygrometer"},
        ]
    )
    assert [r["index"] for r in out.rejected] == [2]


def test_every_built_in_type_has_a_range_and_unit_per_sensor() -> None:
    for t in BUILT_IN.values():
        assert set(t.ranges) == set(t.sensors), t.name
        for sensor, (low, high) in t.ranges.items():
            assert low < high
            assert range_of(t.name, sensor) == (low, high)


@pytest.mark.parametrize(
    "name", ["HeartRateMeter", "heart rate meter", "heart_rate_meter", "Heart Rate Meter"]
)
def test_names_ignore_case_spaces_and_underscores(name: str) -> None:
    assert by_tag(name) is BUILT_IN["Heart Rate Meter"]


def test_flag_mode_counts_in_a_batch_of_one_type_and_sensor() -> None:
    items = [
        {"device_id": "a", "timestamp": T, "heart_rate": v, "tag": "HeartRateMeter"} for v in (10, 60, 301)
    ]
    out = decode(items, FLAG)
    assert (len(out.messages), out.flagged) == (3, 2)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-200, 400, allow_nan=False), min_size=1, max_size=20),
    st.sampled_from(["Thermostat", "Heart Rate Meter"]),
    st.sampled_from(["reject", "flag"]),
)
def test_both_paths_apply_the_range_alike(values: list[float], tag: str, mode: str) -> None:
    sensor, (low, high) = ("temperature", (-50, 100)) if tag == "Thermostat" else ("heart_rate", (20, 300))
    items = [{"device_id": "p", "timestamp": T, sensor: v, "tag": tag} for v in values]
    outside = [i for i, v in enumerate(values) if not low <= v <= high]
    ctx = replace(CTX, out_of_range=mode)
    for fast in (True, False):
        out = decode(items, ctx, fast=fast)
        if mode == "reject":
            assert [r["index"] for r in out.rejected] == outside
            assert [m.readings[0].value for m in out.messages] == [v for v in values if low <= v <= high]
        else:
            assert (out.rejected, out.flagged) == ([], len(outside))
            assert [m.readings[0].value for m in out.messages] == values
