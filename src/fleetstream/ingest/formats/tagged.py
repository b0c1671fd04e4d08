"""Enum-tagged events, as the seed's devices (a Rust ``serde`` enum) send them.

``{"id": 0, "event": "Startup"}``,
``{"id": 0, "event": {"Heartbeat": {"cpu_usage": 79.1, "mem_usage": 10.7}}}``,
``{"id": 0, "event": {"Temperature": {"temp": 21.5}}}``: the variant name is the
event type (any case), the device id is ``id`` (or ``device_id``, or the one of
the URL, topic or Kafka key). They carry no time: the event time is the receive
time, unless ``ts``/``timestamp`` is given.
"""

from __future__ import annotations

from typing import Any

from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.ingest import fields
from fleetstream.ingest.devicetypes import HOST_MONITOR
from fleetstream.ingest.formats import DecodeContext
from fleetstream.ingest.formats.envelope import EVENT_SENSORS

# sensor → the names a variant may give its value (the seed's Temperature says ``temp``)
_ALIASES: dict[str, tuple[str, ...]] = {"temperature": ("temp", "temperature")}
_VARIANTS = "Startup, Heartbeat, Temperature"


class TaggedEventFormat:
    name = "tagged event"
    example = '{"id": 0, "event": {"Heartbeat": {"cpu_usage": 79.1, "mem_usage": 10.7}}}'

    def matches(self, item: dict[str, Any]) -> bool:
        return "event" in item and "type" not in item and "sensor" not in item

    def decode(self, item: dict[str, Any], ctx: DecodeContext) -> DeviceMessage:
        device = fields.device_id(item, ctx.device_id, "id" if "id" in item else "device_id")
        kind, body = _variant(item["event"])
        if "ts" in item or "timestamp" in item:
            ts = fields.timestamp(item, ctx.received_at, ctx.max_future_us, ("ts", "timestamp"))
        else:
            ts = ctx.received_at
        msg_id = fields.msg_id(item)
        readings: list[Reading] = []
        for sensor in EVENT_SENSORS[kind]:
            name = next((n for n in _ALIASES.get(sensor, (sensor,)) if n in body), None)
            if name is None:
                fields.fail(f"event.{kind}.{sensor}", f"required for a {kind} event")
            value = fields.number(f"event.{kind}.{name}", body[name])
            readings.append(
                Reading(device, ts, sensor, value, HOST_MONITOR.sensors[sensor], HOST_MONITOR.name, msg_id)
            )
        return DeviceMessage(device, ts, kind, HOST_MONITOR.name, readings, msg_id, ctx.received_at)


def _variant(event: Any) -> tuple[str, dict[str, Any]]:
    """(event type, its fields) of ``"Startup"`` or ``{"Heartbeat": {...}}``."""
    body: dict[str, Any] = {}
    if isinstance(event, str):
        name = event
    elif isinstance(event, dict) and len(event) == 1:
        [(name, inner)] = event.items()
        if isinstance(inner, dict):
            body = inner
        elif inner is not None:
            fields.fail(f"event.{name}", f"expected an object, got {fields.shown(inner)}")
    else:
        fields.fail("event", f"expected one of {_VARIANTS}, or an object with one of them as its only key")
    kind = name.lower()
    if kind not in EVENT_SENSORS:
        fields.fail("event", f"expected one of {_VARIANTS}, got {fields.shown(name)}")
    return kind, body


FORMAT = TaggedEventFormat()
