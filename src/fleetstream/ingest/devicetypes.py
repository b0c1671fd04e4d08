"""Built-in device types: the sensors each sends and their units.

The full registry (ranges, JSON Schemas, user-registered types) grows from this
table; decoders look units and canonical type names up here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A kind of device: its canonical name and sensor → unit."""

    name: str
    sensors: dict[str, str | None]


THERMOSTAT = DeviceType("Thermostat", {"temperature": "°C"})
BAROMETER = DeviceType("Barometer", {"pressure": "hPa"})
HYGROMETER = DeviceType("Hygrometer", {"humidity": "%"})
HEART_RATE_METER = DeviceType("Heart Rate Meter", {"heart_rate": "bpm"})
HOST_MONITOR = DeviceType("Host Monitor", {"cpu_usage": "%", "mem_usage": "%", "temperature": "°C"})
SENSOR = DeviceType("Sensor", {})

BUILT_IN: dict[str, DeviceType] = {
    t.name: t for t in (THERMOSTAT, BAROMETER, HYGROMETER, HEART_RATE_METER, HOST_MONITOR, SENSOR)
}

# The tag a typed message carries → its type; spaces and case are not significant
# ("Heart Rate Meter", "HeartRateMeter" and "heart_rate_meter" are one type).
_TAGS: dict[str, DeviceType] = {
    name.replace(" ", "").replace("_", "").lower(): t for name, t in BUILT_IN.items()
}

TYPED_SENSORS = ("temperature", "pressure", "humidity", "heart_rate")

KNOWN_UNITS: dict[str, str] = {
    sensor: unit for t in BUILT_IN.values() for sensor, unit in t.sensors.items() if unit is not None
}


def by_tag(tag: str) -> DeviceType | None:
    """The built-in type a message tag names, if any."""
    exact = BUILT_IN.get(tag)  # the common spelling, without normalising (once per message)
    if exact is not None:
        return exact
    return _TAGS.get(tag.replace(" ", "").replace("_", "").replace("-", "").lower())


def known_sensors() -> set[str]:
    """Every sensor name a built-in type sends."""
    return set(KNOWN_UNITS)
