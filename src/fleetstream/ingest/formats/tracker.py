"""Tracker records: ``{"device_id", "ts", "latitude", "longitude", "temperature"?}``.

Position and temperature travel in one message, so the twin takes the
device's location from the latitude and longitude of a single fix.
Device type ``Tracker``.
"""

from __future__ import annotations

from typing import Any

from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ingest import fields
from fleetstream.ingest.devicetypes import TRACKER
from fleetstream.ingest.formats import DecodeContext


class TrackerFormat:
    name = "tracker record"
    example = (
        '{"device_id": "t-9", "ts": "2023-03-28T20:04:22Z", '
        '"latitude": 52.37, "longitude": 4.89, "temperature": 4.1}'
    )

    def matches(self, item: dict[str, Any]) -> bool:
        return "latitude" in item or "longitude" in item

    def decode(self, item: dict[str, Any], ctx: DecodeContext) -> DeviceMessage:
        device = fields.device_id(item, ctx.device_id)
        ts = fields.timestamp(item, ctx.received_at, ctx.max_future_us, ("ts", "timestamp"))
        msg_id = fields.msg_id(item)
        readings: list[Reading] = []
        for sensor, unit in TRACKER.sensors.items():
            raw = item.get(sensor)
            if raw is None:
                if sensor == "temperature":
                    continue
                fields.fail(sensor, "required (a tracker sends latitude and longitude together)")
            readings.append(
                Reading(device, ts, sensor, fields.number(sensor, raw), unit, TRACKER.name, msg_id)
            )
        return DeviceMessage(device, ts, "telemetry", TRACKER.name, readings, msg_id, ctx.received_at)


FORMAT = TrackerFormat()
