"""Built-in device types as data: the sensors each sends, their units and valid ranges.

Ranges are physical plausibility bounds, not alarm thresholds: a value outside
one is a broken sensor or a wrong unit (°F sent as °C), so ingest refuses it
(or flags it, ``FLEETSTREAM_INGEST__OUT_OF_RANGE=flag``). docs/ingest.md lists
them with the reason for each bound.

Multi-sensor host records name their readings ``<kind>/<sensor name>``
(``temperature/CPU Core #1``): a host reports several sensors of one name
under different kinds (``CPU Package`` is a temperature, a power and a load),
and the kind prefix keeps them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Range = tuple[float, float]


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A kind of device: its canonical name, sensor → unit, and sensor → valid range."""

    name: str
    sensors: dict[str, str | None]
    ranges: dict[str, Range] = field(default_factory=dict)
    description: str = ""
    version: int = 1


@dataclass(frozen=True, slots=True)
class SensorKind:
    """A kind of sensor in a multi-sensor host record (``"type": "Temperature"``)."""

    name: str
    unit: str
    range: Range

    @property
    def key(self) -> str:
        """The reading-name prefix (``temperature``)."""
        return self.name.lower()


THERMOSTAT = DeviceType(
    "Thermostat", {"temperature": "°C"}, {"temperature": (-50.0, 100.0)}, "Room or appliance thermostat."
)
BAROMETER = DeviceType(
    "Barometer", {"pressure": "hPa"}, {"pressure": (300.0, 1100.0)}, "Air pressure (station level)."
)
HYGROMETER = DeviceType("Hygrometer", {"humidity": "%"}, {"humidity": (0.0, 100.0)}, "Relative humidity.")
HEART_RATE_METER = DeviceType(
    "Heart Rate Meter", {"heart_rate": "bpm"}, {"heart_rate": (20.0, 300.0)}, "Pulse of a wearer."
)
HOST_KINDS: dict[str, SensorKind] = {
    k.key: k
    for k in (
        SensorKind("Temperature", "°C", (-40.0, 150.0)),
        SensorKind("Power", "W", (0.0, 5000.0)),
        SensorKind("Load", "%", (0.0, 100.0)),
        SensorKind("Voltage", "V", (-20.0, 500.0)),
        SensorKind("Fan", "CFM", (0.0, 1000.0)),
        SensorKind("Clock", "GHz", (0.0, 10.0)),
    )
}
HOST_MONITOR = DeviceType(
    "Host Monitor",
    {"cpu_usage": "%", "mem_usage": "%", "temperature": "°C"},
    {"cpu_usage": (0.0, 100.0), "mem_usage": (0.0, 100.0), "temperature": (-40.0, 150.0)},
    "A computer: event envelopes (heartbeat, temperature) and multi-sensor host records.",
)
TRACKER = DeviceType(
    "Tracker",
    {"latitude": "°", "longitude": "°", "temperature": "°C"},
    {"latitude": (-90.0, 90.0), "longitude": (-180.0, 180.0), "temperature": (-60.0, 85.0)},
    "A moving asset: position (WGS 84) and the temperature of its load.",
)
SENSOR = DeviceType("Sensor", {}, {}, "A plain named value (canonical readings); any finite value.")

BUILT_IN: dict[str, DeviceType] = {
    t.name: t for t in (THERMOSTAT, BAROMETER, HYGROMETER, HEART_RATE_METER, HOST_MONITOR, TRACKER, SENSOR)
}


def _key(name: str) -> str:
    return name.replace(" ", "").replace("_", "").replace("-", "").lower()


# The tag a typed message carries → its type; spaces and case are not significant
# ("Heart Rate Meter", "HeartRateMeter" and "heart_rate_meter" are one type).
_TAGS: dict[str, DeviceType] = {_key(name): t for name, t in BUILT_IN.items()}

TYPED_SENSORS = ("temperature", "pressure", "humidity", "heart_rate")

KNOWN_UNITS: dict[str, str] = {
    sensor: unit
    for t in (THERMOSTAT, BAROMETER, HYGROMETER, HEART_RATE_METER, HOST_MONITOR)
    for sensor, unit in t.sensors.items()
    if unit is not None
}

# (device type, sensor) → valid range, for the range check of every decoded reading.
RANGES: dict[tuple[str, str], Range] = {
    (t.name, sensor): bounds for t in BUILT_IN.values() for sensor, bounds in t.ranges.items()
}
for _kind in HOST_KINDS.values():  # host-record readings: "<kind>/<name>", or "<kind>" unnamed
    RANGES[HOST_MONITOR.name, f"{_kind.key}/"] = _kind.range
    RANGES.setdefault((HOST_MONITOR.name, _kind.key), _kind.range)


def by_tag(tag: str) -> DeviceType | None:
    """The built-in type a message tag (or an API path) names, if any."""
    exact = BUILT_IN.get(tag)  # the common spelling, without normalising (once per message)
    if exact is not None:
        return exact
    return _TAGS.get(_key(tag))


def range_of(device_type: str, sensor: str) -> Range | None:
    """The valid range of a sensor of a device type, if the type bounds it.

    >>> range_of("Host Monitor", "power/CPU Package"), range_of("Sensor", "x")
    ((0.0, 5000.0), None)
    """
    bounds = RANGES.get((device_type, sensor))
    if bounds is None and "/" in sensor:
        bounds = RANGES.get((device_type, sensor[: sensor.index("/") + 1]))
    return bounds


def known_sensors() -> set[str]:
    """Every sensor name a built-in type sends."""
    return set(KNOWN_UNITS)
