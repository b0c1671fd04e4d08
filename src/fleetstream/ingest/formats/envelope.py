"""Event envelopes: ``{"device_id": 1, "type": "heartbeat", "ts": "...", "event": {...}}``.

Types: ``startup`` (no readings; an event of the device), ``heartbeat``
(``cpu_usage``, ``mem_usage`` in %), ``temperature`` (``temperature`` in °C).
Values may be numeric strings (``"79.12"``).
"""

from __future__ import annotations

from typing import Any

from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ingest import fields
from fleetstream.ingest.devicetypes import HOST_MONITOR
from fleetstream.ingest.formats import DecodeContext

# type → the sensors its event carries (all required)
EVENT_SENSORS: dict[str, tuple[str, ...]] = {
    "startup": (),
    "heartbeat": ("cpu_usage", "mem_usage"),
    "temperature": ("temperature",),
}
_TYPES = ", ".join(EVENT_SENSORS)


class EnvelopeFormat:
    name = "envelope"
    example = (
        '{"device_id": 1, "type": "heartbeat", "ts": "2023-03-28T20:04:22Z", '
        '"event": {"cpu_usage": "79.12", "mem_usage": "10.75"}}'
    )

    def matches(self, item: dict[str, Any]) -> bool:
        if "type" not in item:
            return False
        kind = item["type"]  # any case, as decode() takes it: "Startup" is a startup too
        return "event" in item or (isinstance(kind, str) and kind.lower() == "startup")

    def decode(self, item: dict[str, Any], ctx: DecodeContext) -> DeviceMessage:
        kind = item.get("type")
        if not isinstance(kind, str) or kind.lower() not in EVENT_SENSORS:
            fields.fail("type", f"expected one of {_TYPES}, got {fields.shown(kind)}")
        kind = kind.lower()
        device = fields.device_id(item, ctx.device_id)
        ts = fields.timestamp(item, ctx.received_at, ctx.max_future_us, ("ts", "timestamp"))
        event = item.get("event")
        if event is None:
            event = {}
        if not isinstance(event, dict):
            fields.fail("event", f"expected an object, got {fields.shown(event)}")
        msg_id = fields.msg_id(item)
        readings: list[Reading] = []
        for sensor in EVENT_SENSORS[kind]:
            if sensor not in event:
                fields.fail(f"event.{sensor}", f"required for a {kind} event")
            value = fields.number(f"event.{sensor}", event[sensor])
            readings.append(
                Reading(device, ts, sensor, value, HOST_MONITOR.sensors[sensor], HOST_MONITOR.name, msg_id)
            )
        return DeviceMessage(device, ts, kind, HOST_MONITOR.name, readings, msg_id, ctx.received_at)


FORMAT = EnvelopeFormat()
