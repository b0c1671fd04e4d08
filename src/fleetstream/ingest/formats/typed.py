"""Typed device messages: ``{"device_id", "timestamp", "<sensor>": v, "tag": "Thermostat"}``."""

from __future__ import annotations

from typing import Any

from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ingest import fields
from fleetstream.ingest.devicetypes import BUILT_IN, by_tag
from fleetstream.ingest.formats import DecodeContext

_TYPED = ", ".join(f"{t.name} ({', '.join(t.sensors)})" for t in BUILT_IN.values() if t.sensors)


class TypedFormat:
    name = "typed"
    example = (
        '{"device_id": "2", "timestamp": "2023-03-28T20:05:22Z", "pressure": 1060.5, "tag": "Barometer"}'
    )

    def matches(self, item: dict[str, Any]) -> bool:
        return "tag" in item

    def decode(self, item: dict[str, Any], ctx: DecodeContext) -> DeviceMessage:
        tag = fields.text(item, "tag")
        assert tag is not None
        device_type = by_tag(tag)
        if device_type is None or not device_type.sensors:
            fields.fail("tag", f"unknown device type {fields.shown(tag)}; known: {_TYPED}")
        device = fields.device_id(item, ctx.device_id)
        ts = fields.timestamp(item, ctx.received_at, ctx.max_future_us)
        msg_id = fields.msg_id(item)
        readings = [
            Reading(device, ts, sensor, fields.number(sensor, item[sensor]), unit, device_type.name, msg_id)
            for sensor, unit in device_type.sensors.items()
            if item.get(sensor) is not None
        ]
        if not readings:
            wanted = " or ".join(device_type.sensors)
            fields.fail(wanted, f"required for a {device_type.name} message")
        return DeviceMessage(device, ts, "telemetry", device_type.name, readings, msg_id, ctx.received_at)


FORMAT = TypedFormat()
