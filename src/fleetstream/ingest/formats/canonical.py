"""The canonical reading: ``{"device_id", "timestamp" | "ts", "sensor", "value"}``."""

from __future__ import annotations

from typing import Any

from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ingest import fields
from fleetstream.ingest.devicetypes import KNOWN_UNITS
from fleetstream.ingest.formats import DecodeContext


class CanonicalFormat:
    name = "canonical"
    example = (
        '{"device_id": "1", "timestamp": "2023-03-28T20:04:22Z", "sensor": "temperature", "value": 25.2}'
    )

    def matches(self, item: dict[str, Any]) -> bool:
        return "sensor" in item or "value" in item

    def decode(self, item: dict[str, Any], ctx: DecodeContext) -> DeviceMessage:
        device = fields.device_id(item, ctx.device_id)
        ts = fields.timestamp(item, ctx.received_at, ctx.max_future_us)
        sensor = fields.text(item, "sensor")
        assert sensor is not None
        if "value" not in item:
            fields.fail("value", "required")
        value = fields.number("value", item["value"])
        unit = fields.text(item, "unit", required=False) or KNOWN_UNITS.get(sensor)
        device_type = fields.text(item, "device_type", required=False) or "Sensor"
        msg_id = fields.msg_id(item)
        reading = Reading(device, ts, sensor, value, unit, device_type, msg_id)
        return DeviceMessage(device, ts, "telemetry", device_type, [reading], msg_id, ctx.received_at)


FORMAT = CanonicalFormat()
