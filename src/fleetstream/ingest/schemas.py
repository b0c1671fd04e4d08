"""JSON Schemas (draft 2020-12) of the built-in device types' messages: the schema registry.

Each schema describes what a device of the type sends, with its valid ranges
as ``minimum``/``maximum``. Ingest itself decodes built-in types on its own
fast path (it also takes numeric strings and the spellings docs/ingest.md
lists); the schemas are the contract a device maker codes against.
"""

from __future__ import annotations

from typing import Any

from fleetstream.domain.records import DEVICE_ID_RULE
from fleetstream.ingest.devicetypes import (
    BUILT_IN,
    HOST_KINDS,
    HOST_MONITOR,
    SENSOR,
    TRACKER,
    DeviceType,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"
Schema = dict[str, Any]

_ID_PATTERN = "^[A-Za-z0-9_.:@!-]{1,128}$"
_TIME: Schema = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "number", "minimum": 0, "description": "epoch seconds, milliseconds or microseconds"},
    ],
    "description": "event time: RFC 3339 with an offset, or an epoch number",
}
_COMMON: Schema = {
    "device_id": {
        "type": ["string", "integer"],
        "pattern": _ID_PATTERN,
        "description": f"the device; {DEVICE_ID_RULE}",
    },
    "timestamp": _TIME,
    "ts": _TIME,
    "msg_id": {"type": ["string", "integer"], "description": "dedup key (optional)"},
    "seq": {"type": "integer", "description": "dedup key (optional)"},
}
_HAS_TIME: Schema = {"anyOf": [{"required": ["timestamp"]}, {"required": ["ts"]}]}


def slug(t: DeviceType) -> str:
    """The type's name in URLs (``HeartRateMeter``)."""
    return t.name.replace(" ", "")


def _value(t: DeviceType, sensor: str) -> Schema:
    low, high = t.ranges[sensor]
    unit = t.sensors[sensor]
    return {"type": "number", "minimum": low, "maximum": high, "description": f"{sensor} in {unit}"}


def _object(properties: Schema, required: list[str], **extra: Any) -> Schema:
    return {"type": "object", "properties": {**_COMMON, **properties}, "required": required, **extra}


def _typed(t: DeviceType) -> Schema:
    spellings = sorted({t.name, slug(t)})
    props = {s: _value(t, s) for s in t.sensors}
    props["tag"] = {"type": "string", "enum": spellings, "description": "the device type"}
    return _object(
        props, ["device_id", "tag"], allOf=[_HAS_TIME, {"anyOf": [{"required": [s]} for s in t.sensors]}]
    )


def _host() -> Schema:
    t = HOST_MONITOR
    sensor_item = {
        "type": "object",
        "properties": {
            "type": {"enum": [k.name for k in HOST_KINDS.values()]},
            "name": {"type": "string", "minLength": 1, "maxLength": 128},
            "value": {"type": "number"},
        },
        "required": ["type", "value"],
        "allOf": [
            {
                "if": {"properties": {"type": {"const": k.name}}},
                "then": {"properties": {"value": {"minimum": k.range[0], "maximum": k.range[1]}}},
            }
            for k in HOST_KINDS.values()
        ],
    }
    envelope = _object(
        {
            "type": {"enum": ["startup", "heartbeat", "temperature"]},
            "event": {
                "type": "object",
                "properties": {s: _value(t, s) for s in t.sensors},
            },
        },
        ["device_id", "type"],
        allOf=[_HAS_TIME],
    )
    record = _object(
        {"sensors": {"type": "array", "minItems": 1, "items": sensor_item}},
        ["device_id", "sensors"],
        allOf=[_HAS_TIME],
    )
    return {"oneOf": [envelope, record]}


def _tracker() -> Schema:
    props = {s: _value(TRACKER, s) for s in TRACKER.sensors}
    return _object(props, ["device_id", "latitude", "longitude"], allOf=[_HAS_TIME])


def _sensor() -> Schema:
    props: Schema = {
        "sensor": {"type": "string", "minLength": 1, "maxLength": 128},
        "value": {"type": "number"},
        "unit": {"type": "string", "minLength": 1, "maxLength": 128},
        "device_type": {"type": "string", "minLength": 1, "maxLength": 128},
    }
    return _object(props, ["device_id", "sensor", "value"], allOf=[_HAS_TIME])


def schema_of(t: DeviceType) -> Schema:
    """The JSON Schema of a built-in type's messages."""
    if t is HOST_MONITOR:
        body = _host()
    elif t is TRACKER:
        body = _tracker()
    elif t is SENSOR:
        body = _sensor()
    else:
        body = _typed(t)
    return {
        "$schema": DIALECT,
        "$id": f"/api/v1/device-types/{slug(t)}/schema",
        "title": t.name,
        "description": t.description,
        **body,
    }


SCHEMAS: dict[str, Schema] = {name: schema_of(t) for name, t in BUILT_IN.items()}
