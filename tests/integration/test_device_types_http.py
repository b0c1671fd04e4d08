"""The device-type registry over real HTTP: types, schemas, host and tracker records, the range check."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import fastjsonschema
import pytest

from ._support import ServerProcess, at, wait_for

pytestmark = pytest.mark.integration

BUILT_IN = ["Thermostat", "Barometer", "Hygrometer", "Heart Rate Meter", "Host Monitor", "Tracker", "Sensor"]


def test_list_names_every_built_in_type_with_units_and_ranges(shared_server: ServerProcess) -> None:
    status, body = shared_server.call("GET", "/api/v1/device-types")
    assert status == 200
    assert [t["name"] for t in body["device_types"]] == BUILT_IN
    thermostat = body["device_types"][0]
    assert thermostat["sensors"] == {"temperature": {"unit": "°C", "range": [-50.0, 100.0]}}
    assert thermostat["version"] == 1
    assert "schema" not in thermostat


@pytest.mark.parametrize(
    "name", ["HeartRateMeter", "Heart%20Rate%20Meter", "heart_rate_meter", "HEARTRATEMETER"]
)
def test_one_type_by_any_spelling(shared_server: ServerProcess, name: str) -> None:
    status, body = shared_server.call("GET", f"/api/v1/device-types/{name}")
    assert status == 200
    assert body["name"] == "Heart Rate Meter"
    assert body["sensors"] == {"heart_rate": {"unit": "bpm", "range": [20.0, 300.0]}}
    assert body["schema"]["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_host_monitor_lists_the_host_record_sensor_kinds(shared_server: ServerProcess) -> None:
    _, body = shared_server.call("GET", "/api/v1/device-types/Host%20Monitor")
    kinds = body["host_sensor_kinds"]
    assert {k: v["unit"] for k, v in kinds.items()} == {
        "Temperature": "°C",
        "Power": "W",
        "Load": "%",
        "Voltage": "V",
        "Fan": "CFM",
        "Clock": "GHz",
    }
    assert kinds["Load"] == {"reading": "load/<name>", "unit": "%", "range": [0.0, 100.0]}


def test_unknown_type_is_404_naming_the_known_ones(shared_server: ServerProcess) -> None:
    for path in ("/api/v1/device-types/Toaster", "/api/v1/device-types/Toaster/schema"):
        status, body = shared_server.call("GET", path)
        assert status == 404
        assert body["error"]["code"] == "not_found"
        assert body["error"]["message"] == "no device type 'Toaster'; known: " + ", ".join(BUILT_IN)


def test_schema_is_served_as_schema_json_and_validates_messages(shared_server: ServerProcess) -> None:
    with urllib.request.urlopen(shared_server.url + "/api/v1/device-types/Thermostat/schema") as resp:
        assert resp.headers["Content-Type"] == "application/schema+json"
        schema = json.loads(resp.read())
    validate = fastjsonschema.compile(schema)
    good = {"device_id": "th-1", "timestamp": at(0), "temperature": 21.5, "tag": "Thermostat"}
    assert validate(good) == good
    for bad in (
        {**good, "temperature": 900},
        {k: v for k, v in good.items() if k != "timestamp"},
        {**good, "tag": "Barometer"},
    ):
        with pytest.raises(fastjsonschema.JsonSchemaException):
            validate(bad)


def test_host_record_becomes_readings_named_by_kind_and_sensor(shared_server: ServerProcess) -> None:
    record = {
        "device_id": "dt-pc-1",
        "ts": at(0),
        "sensors": [
            {"type": "Temperature", "name": "CPU Core #1", "value": 61.0},
            {"type": "Fan", "name": "Case", "value": 32.5},
        ],
    }
    status, body = shared_server.call("POST", "/api/v1/telemetry", record)
    assert (status, body) == (202, {"accepted": 1, "rejected": []})
    twin = wait_for(lambda: _twin_with(shared_server, "dt-pc-1", "fan/Case"))
    assert twin["device_type"] == "Host Monitor"
    assert {k: v["value"] for k, v in twin["sensors"].items()} == {
        "temperature/CPU Core #1": 61.0,
        "fan/Case": 32.5,
    }


def test_tracker_record_sets_readings_and_location(shared_server: ServerProcess) -> None:
    record = {"device_id": "dt-t-9", "ts": at(0), "latitude": 52.37, "longitude": 4.89, "temperature": 4.1}
    status, _ = shared_server.call("POST", "/api/v1/telemetry", record)
    assert status == 202
    twin = wait_for(lambda: _twin_with(shared_server, "dt-t-9", "temperature"))
    assert twin["device_type"] == "Tracker"
    assert (twin["location"]["lat"], twin["location"]["lon"]) == (52.37, 4.89)
    assert {k: v["value"] for k, v in twin["sensors"].items()} == {
        "latitude": 52.37,
        "longitude": 4.89,
        "temperature": 4.1,
    }


def test_out_of_range_is_rejected_with_the_range(shared_server: ServerProcess) -> None:
    batch = [
        {"device_id": "dt-th", "timestamp": at(0), "temperature": 900, "tag": "Thermostat"},
        {"device_id": "dt-th", "timestamp": at(1), "temperature": 20, "tag": "Thermostat"},
    ]
    status, body = shared_server.call("POST", "/api/v1/telemetry", batch)
    assert (status, body) == (
        202,
        {
            "accepted": 1,
            "rejected": [
                {"index": 0, "error": "temperature: 900 is outside the Thermostat range -50..100 °C"}
            ],
        },
    )


def test_flag_mode_accepts_and_counts(start: Callable[..., ServerProcess]) -> None:
    srv = start(env={"FLEETSTREAM_INGEST__OUT_OF_RANGE": "flag"})
    batch = [
        {"device_id": "dt-f", "timestamp": at(0), "temperature": 900, "tag": "Thermostat"},
        {"device_id": "dt-f", "timestamp": at(1), "temperature": 20, "tag": "Thermostat"},
        {"device_id": "dt-f", "ts": at(2), "sensors": [{"type": "Load", "value": 140}]},
    ]
    assert srv.call("POST", "/api/v1/telemetry", batch) == (202, {"accepted": 3, "rejected": []})
    _, text = srv.call("GET", "/metrics")
    assert "fleetstream_out_of_range_total 2\n" in text


def _twin_with(srv: ServerProcess, device: str, sensor: str) -> dict[str, object] | None:
    status, twin = srv.call("GET", f"/api/v1/devices/{device}")
    return twin if status == 200 and sensor in twin.get("sensors", {}) else None


SOIL = {
    "name": "Soil Probe",
    "schema": {
        "type": "object",
        "properties": {
            "moisture": {"type": "number", "minimum": 0, "maximum": 100},
            "ph": {"type": "number"},
        },
        "required": ["moisture"],
    },
    "units": {"moisture": "%", "ph": "pH"},
    "ranges": {"ph": [0, 14]},
}


def test_register_a_type_validate_its_messages_and_version_it(
    start: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    srv = start(data=data)
    status, body = srv.call("POST", "/api/v1/device-types", SOIL)
    assert status == 201
    assert (body["name"], body["version"], body["versions"], body["builtin"]) == ("Soil Probe", 1, [1], False)
    assert body["sensors"] == {
        "moisture": {"unit": "%", "range": None},
        "ph": {"unit": "pH", "range": [0.0, 14.0]},
    }
    assert srv.call("POST", "/api/v1/device-types", SOIL)[0] == 200  # the same again: no new version
    assert srv.call("GET", "/api/v1/device-types/soil_probe/schema") == (200, SOIL["schema"])
    _, listing = srv.call("GET", "/api/v1/device-types")
    assert [t["name"] for t in listing["device_types"]] == [*BUILT_IN, "Soil Probe"]

    batch = [
        {"device_id": "sp-1", "timestamp": at(0), "tag": "Soil Probe", "moisture": 31.5, "ph": 6.5},
        {"device_id": "sp-1", "timestamp": at(1), "tag": "Soil Probe", "moisture": 130},
        {"device_id": "sp-1", "timestamp": at(2), "device_type": "SoilProbe", "moisture": 20, "ph": 20},
    ]
    assert srv.call("POST", "/api/v1/telemetry", batch) == (
        202,
        {
            "accepted": 1,
            "rejected": [
                {
                    "index": 1,
                    "error": "schema: Soil Probe v1: data.moisture must be smaller than or equal to 100",
                },
                {"index": 2, "error": "ph: 20 is outside the Soil Probe range 0..14 pH"},
            ],
        },
    )
    twin = wait_for(lambda: _twin_with(srv, "sp-1", "ph"))
    assert (twin["device_type"], twin["sensors"]["moisture"]["value"]) == ("Soil Probe", 31.5)

    narrower = {**SOIL, "ranges": {"ph": [4, 9]}}
    status, body = srv.call("POST", "/api/v1/device-types", narrower)
    assert status == 409
    assert body["error"]["code"] == "incompatible_schema"
    assert body["error"]["details"] == {
        "version": 1,
        "changes": ["range of 'ph' narrowed from 0..14 to 4..9"],
    }
    status, body = srv.call("POST", "/api/v1/device-types?force=true", narrower)
    assert (status, body["version"], body["versions"]) == (201, 2, [1, 2])

    srv.stop()
    again = start(data=data)
    _, body = again.call("GET", "/api/v1/device-types/SoilProbe")
    assert (body["version"], body["sensors"]["ph"]["range"]) == (2, [4.0, 9.0])
    ok = {"device_id": "sp-2", "timestamp": at(3), "tag": "Soil Probe", "moisture": 3, "ph": 10}
    assert again.call("POST", "/api/v1/telemetry", ok)[1]["rejected"] == [
        {"index": 0, "error": "ph: 10 is outside the Soil Probe range 4..9 pH"}
    ]


def test_bad_registration_is_400_naming_the_field(shared_server: ServerProcess) -> None:
    status, body = shared_server.call("POST", "/api/v1/device-types", {**SOIL, "name": "Barometer"})
    assert status == 400
    assert body["error"]["message"] == "name: 'Barometer' is a built-in device type"
    status, body = shared_server.call(
        "POST", "/api/v1/device-types", raw=b"{", content_type="application/json"
    )
    assert (status, body["error"]["code"]) == (400, "malformed_body")
