"""User-registered device types: registration, versions, the compatibility rule, validation of messages."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleetstream.errors import InvalidInput
from fleetstream.ingest.decode import Decoded, decode_body
from fleetstream.ingest.formats import DecodeContext
from fleetstream.ingest.typeregistry import IncompatibleType, UserTypes

NOW = 1_700_000_000_000_000
T = "2023-03-28T20:04:22Z"
T_US = 1_680_033_862_000_000


def soil(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
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
    spec.update(changes)
    return spec


def schema_with(**props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(json.dumps(soil()["schema"]))
    schema.update(props)
    return schema


def decode(items: object, types: UserTypes, mode: str = "reject") -> Decoded:
    ctx = DecodeContext(NOW, 86_400_000_000, out_of_range=mode, user_types=types)
    return decode_body(json.dumps(items).encode(), "json", ctx, 1000)


def test_messages_of_a_user_type_are_validated_and_become_readings() -> None:
    types = UserTypes()
    types.register(soil())
    out = decode(
        [
            {"device_id": "s1", "timestamp": T, "tag": "Soil Probe", "moisture": 31.5, "ph": 6.5},
            {"device_id": "s1", "timestamp": T, "device_type": "SoilProbe", "moisture": 30},
            {"device_id": "s1", "timestamp": T, "tag": "soil_probe", "moisture": 130},
            {"device_id": "s1", "timestamp": T, "tag": "Soil Probe", "ph": 7},
            {"device_id": "s1", "timestamp": T, "tag": "Soil Probe", "moisture": 3, "ph": 15},
        ],
        types,
    )
    assert [[(r.sensor, r.value, r.unit, r.device_type) for r in m.readings] for m in out.messages] == [
        [("moisture", 31.5, "%", "Soil Probe"), ("ph", 6.5, "pH", "Soil Probe")],
        [("moisture", 30.0, "%", "Soil Probe")],
    ]
    assert out.messages[0].ts == T_US
    assert out.rejected == [
        {"index": 2, "error": "schema: Soil Probe v1: data.moisture must be smaller than or equal to 100"},
        {"index": 3, "error": "schema: Soil Probe v1: data must contain ['moisture'] properties"},
        {"index": 4, "error": "ph: 15 is outside the Soil Probe range 0..14 pH"},
    ]


def test_flag_mode_counts_a_user_type_range() -> None:
    types = UserTypes()
    types.register(soil())
    out = decode(
        [{"device_id": "s1", "timestamp": T, "tag": "Soil Probe", "moisture": 3, "ph": 15}], types, "flag"
    )
    assert (len(out.messages), out.flagged) == (1, 1)


def test_unregistered_tag_is_still_an_unknown_type() -> None:
    out = decode([{"device_id": "s1", "timestamp": T, "tag": "Soil Probe", "moisture": 3}], UserTypes())
    assert out.rejected[0]["error"].startswith('tag: unknown device type "Soil Probe"')


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"schema": schema_with(properties={"moisture": {"type": "number"}})}, "property 'ph' removed"),
        ({"schema": schema_with(required=["moisture", "ph"])}, "field 'ph' newly required"),
        (
            {"schema": schema_with(properties={"moisture": {"type": "number", "maximum": 90}, "ph": {}})},
            "property 'moisture': maximum lowered to 90",
        ),
        (
            {"schema": schema_with(properties={"moisture": {"type": "integer"}, "ph": {}})},
            "property 'moisture': type narrowed to 'integer'",
        ),
        ({"schema": schema_with(additionalProperties=False)}, "additional properties newly refused"),
        ({"ranges": {"ph": [1, 14]}}, "range of 'ph' narrowed from 0..14 to 1..14"),
        ({"ranges": {"ph": [0, 14], "moisture": [0, 100]}}, "range of 'moisture' added (0..100)"),
        (
            {"units": {"moisture": "fraction", "ph": "pH"}},
            "unit of 'moisture' changed from '%' to 'fraction'",
        ),
    ],
)
def test_a_version_that_rejects_more_is_refused_unless_forced(changes: dict[str, Any], reason: str) -> None:
    types = UserTypes()
    types.register(soil())
    with pytest.raises(IncompatibleType) as caught:
        types.register(soil(**changes))
    assert reason in caught.value.details["changes"]
    assert caught.value.details["version"] == 1
    assert types.latest("Soil Probe").version == 1  # type: ignore[union-attr]
    t, created = types.register(soil(**changes), force=True)
    assert (t.version, created) == (2, True)


def test_a_wider_version_registers_and_validates_from_then_on() -> None:
    types = UserTypes()
    types.register(soil())
    wider = soil(
        schema=schema_with(properties={"moisture": {"type": "number"}, "ph": {}, "ec": {"type": "number"}}),
        units={"moisture": "%", "ph": "pH", "ec": "mS/cm"},
        ranges={"ph": [-1, 15]},
    )
    t, created = types.register(wider)
    assert (t.version, created) == (2, True)
    out = decode(
        [{"device_id": "s1", "timestamp": T, "tag": "Soil Probe", "moisture": 130, "ec": 1.2}], types
    )
    assert out.rejected == []
    assert [r.sensor for r in out.messages[0].readings] == ["moisture", "ec"]


def test_registering_the_same_spec_again_adds_no_version() -> None:
    types = UserTypes()
    types.register(soil())
    t, created = types.register(soil())
    assert (t.version, created) == (1, False)


def test_versions_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "device-types.json"
    types = UserTypes(path)
    types.register(soil())
    types.register(soil(ranges={"ph": [-1, 15]}))
    again = UserTypes(path)
    assert [t.version for t in again.versions("soilprobe")] == [1, 2]
    out = decode([{"device_id": "s1", "timestamp": T, "tag": "Soil Probe", "moisture": 1, "ph": 14.5}], again)
    assert out.rejected == []


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (soil(name="Thermostat"), "name: 'Thermostat' is a built-in device type"),
        (soil(name="9lives"), "name: expected 1 to 64 characters"),
        (soil(units={}), "units: expected an object of sensor → unit"),
        (soil(ranges={"depth": [0, 1]}), "ranges.depth: not a sensor listed in units"),
        (soil(ranges={"ph": [14, 0]}), "ranges.ph: expected [low, high] with finite low <= high"),
        (soil(schema=[1]), "schema: expected a JSON Schema object"),
        (soil(schema={"$ref": "http://example.com/s.json"}), "schema: only local $ref"),
        (soil(schema={"type": "object", "minimum": "x"}), "schema: not a valid JSON Schema"),
    ],
)
def test_bad_registrations_name_the_field(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        UserTypes().register(spec)
    assert caught.value.message.startswith(error)


def test_decode_context_without_user_types_is_unchanged() -> None:
    ctx = replace(DecodeContext(NOW, 86_400_000_000), user_types=None)
    out = decode_body(
        b'{"device_id": "s1", "timestamp": "2023-03-28T20:04:22Z", "tag": "X", "v": 1}', "json", ctx, 10
    )
    assert out.rejected[0]["error"].startswith('tag: unknown device type "X"')
