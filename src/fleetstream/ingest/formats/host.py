"""Multi-sensor host records: ``{"device_id", "ts", "sensors": [{"type", "name", "value"}, ...]}``.

One reading per sensor, named ``<kind>/<name>`` (``temperature/CPU Core #1``;
just ``<kind>`` when the sensor has no name), with the unit of its kind.
Device type ``Host Monitor``.
"""

from __future__ import annotations

from typing import Any

from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ingest import fields
from fleetstream.ingest.devicetypes import HOST_KINDS, HOST_MONITOR
from fleetstream.ingest.formats import DecodeContext

_KINDS = ", ".join(k.name for k in HOST_KINDS.values())


class HostRecordFormat:
    name = "host record"
    example = (
        '{"device_id": "pc-1", "ts": "2023-03-28T20:04:22Z", '
        '"sensors": [{"type": "Temperature", "name": "CPU Core #1", "value": 61.0}]}'
    )

    def matches(self, item: dict[str, Any]) -> bool:
        return "sensors" in item

    def decode(self, item: dict[str, Any], ctx: DecodeContext) -> DeviceMessage:
        device = fields.device_id(item, ctx.device_id)
        ts = fields.timestamp(item, ctx.received_at, ctx.max_future_us, ("ts", "timestamp"))
        msg_id = fields.msg_id(item)
        sensors = item["sensors"]
        if not isinstance(sensors, list) or not sensors:
            fields.fail("sensors", f"expected a non-empty array of sensors, got {fields.shown(sensors)}")
        readings: list[Reading] = []
        for i, sensor in enumerate(sensors):
            where = f"sensors[{i}]"
            if not isinstance(sensor, dict):
                fields.fail(where, f"expected an object, got {fields.shown(sensor)}")
            raw_kind = sensor.get("type")
            kind = HOST_KINDS.get(raw_kind.lower()) if isinstance(raw_kind, str) else None
            if kind is None:
                fields.fail(f"{where}.type", f"expected one of {_KINDS}, got {fields.shown(raw_kind)}")
            name = fields.text(sensor, "name", required=False)
            if "value" not in sensor:
                fields.fail(f"{where}.value", "required")
            value = fields.number(f"{where}.value", sensor["value"])
            reading_name = kind.key if name is None else f"{kind.key}/{name}"
            readings.append(Reading(device, ts, reading_name, value, kind.unit, HOST_MONITOR.name, msg_id))
        return DeviceMessage(device, ts, "telemetry", HOST_MONITOR.name, readings, msg_id, ctx.received_at)


FORMAT = HostRecordFormat()
