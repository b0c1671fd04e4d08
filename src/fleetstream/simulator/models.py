"""Simulated device kinds and the bounded random walk their sensors follow.

Each sensor value is a mean-reverting walk (a discretised Ornstein-Uhlenbeck
process) around a resting level of its own device, reflected at the sensor's
range: consecutive values are close to each other and drift back towards
normal, as real readings do, instead of being uniform noise.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from fleetstream.domain.timeutil import us_to_datetime
from fleetstream.ingest.devicetypes import (
    BAROMETER,
    HEART_RATE_METER,
    HOST_MONITOR,
    HYGROMETER,
    THERMOSTAT,
    DeviceType,
)


@dataclass(frozen=True, slots=True)
class SensorModel:
    """How one sensor's value moves.

    Attributes:
        name: the sensor, as the server knows it (``temperature``, ``cpu_usage``...).
        low: smallest value ever sent.
        high: largest value ever sent.
        home_low: lowest resting level a device may draw.
        home_high: highest resting level a device may draw.
        spread: standard deviation of the value around its resting level, in the long run.
        reversion_s: time constant (s) of the pull back to the resting level.
        decimals: digits after the point in messages (0 sends integers).
    """

    name: str
    low: float
    high: float
    home_low: float
    home_high: float
    spread: float
    reversion_s: float
    decimals: int = 1

    def walk(self, dt_s: float) -> Walk:
        """The step function for values sent every ``dt_s`` seconds."""
        return Walk(self, dt_s)

    def initial(self, rng: random.Random) -> tuple[float, float]:
        """A device's resting level and first value."""
        home = rng.uniform(self.home_low, self.home_high)
        return home, self.bound(home + self.spread * rng.gauss(0.0, 1.0))

    def bound(self, value: float) -> float:
        """Reflect a value that left the range back into it (clamped when far out)."""
        if value > self.high:
            value = 2 * self.high - value
        elif value < self.low:
            value = 2 * self.low - value
        return min(max(value, self.low), self.high)

    def shown(self, value: float) -> float | int:
        """The value as a message carries it."""
        if self.decimals <= 0:
            return round(value)
        return round(value, self.decimals)


class Walk:
    """One step of a sensor's walk over a fixed time step.

    The exact discretisation of an Ornstein-Uhlenbeck process, so it is
    stable for any step (a slow device simply forgets more of its last value):

        x' = home + (x - home) * a + spread * sqrt(1 - a²) * N(0, 1),   a = exp(-dt / reversion)

    Example:
        >>> w = SensorModel("humidity", 20, 90, 35, 60, 5.0, 300.0).walk(1.0)
        >>> rng = random.Random(1)
        >>> all(20 <= w.step(50.0, 45.0, rng) <= 90 for _ in range(100))
        True
    """

    __slots__ = ("_a", "_b", "model")

    def __init__(self, model: SensorModel, dt_s: float) -> None:
        self.model = model
        self._a = math.exp(-dt_s / model.reversion_s)
        self._b = model.spread * math.sqrt(1.0 - self._a * self._a)

    def step(self, value: float, home: float, rng: random.Random) -> float:
        """The next value after ``value`` for a device resting at ``home``."""
        moved = home + (value - home) * self._a + self._b * rng.gauss(0.0, 1.0)
        return self.model.bound(moved)


@dataclass(frozen=True, slots=True)
class DeviceKind:
    """A kind of simulated device.

    Attributes:
        key: the device id prefix (``thermostat`` → ``thermostat-0001``) and the name used in weights.
        device_type: the server's device type; its name is the ``tag`` of typed messages.
        sensors: the sensors it sends, in the order of :attr:`SimDevice.values`.
        envelope: sends event envelopes (startup, heartbeat, temperature) rather than typed messages.
        moves: a tracker: sends its position and temperature as canonical readings.
    """

    key: str
    device_type: DeviceType
    sensors: tuple[SensorModel, ...]
    envelope: bool = False
    moves: bool = False

    @property
    def tag(self) -> str:
        """The ``tag`` of its typed messages."""
        return self.device_type.name


INDOOR_TEMPERATURE = SensorModel("temperature", 15.0, 30.0, 19.0, 24.0, 1.2, 120.0)
PRESSURE = SensorModel("pressure", 980.0, 1040.0, 995.0, 1030.0, 3.0, 600.0)
HUMIDITY = SensorModel("humidity", 20.0, 90.0, 35.0, 60.0, 5.0, 300.0)
HEART_RATE = SensorModel("heart_rate", 50.0, 160.0, 60.0, 90.0, 10.0, 60.0, decimals=0)
CPU_USAGE = SensorModel("cpu_usage", 0.0, 100.0, 10.0, 60.0, 15.0, 30.0, decimals=2)
MEM_USAGE = SensorModel("mem_usage", 0.0, 100.0, 30.0, 70.0, 5.0, 300.0, decimals=2)
HOST_TEMPERATURE = SensorModel("temperature", 30.0, 90.0, 40.0, 60.0, 6.0, 60.0)
FAN_RPM = SensorModel("fan_rpm", 0.0, 5000.0, 1800.0, 2400.0, 40.0, 60.0, decimals=0)
VOLTAGE = SensorModel("voltage", 10.0, 13.0, 11.95, 12.1, 0.03, 60.0, decimals=3)
OUTDOOR_TEMPERATURE = SensorModel("temperature", -20.0, 40.0, 5.0, 20.0, 3.0, 1800.0)

# Host sensors in the order of SimDevice.values.
HOST_CPU, HOST_MEM, HOST_TEMP, HOST_FAN, HOST_VOLT = 0, 1, 2, 3, 4

TRACKER = DeviceType("Tracker", {"latitude": "°", "longitude": "°", "temperature": "°C"})
"""The server's tracker type (its tracker record format carries the same three values)."""
HOST_UNITS = {"fan_rpm": "rpm", "voltage": "V"}

KINDS: dict[str, DeviceKind] = {
    kind.key: kind
    for kind in (
        DeviceKind("thermostat", THERMOSTAT, (INDOOR_TEMPERATURE,)),
        DeviceKind("barometer", BAROMETER, (PRESSURE,)),
        DeviceKind("hygrometer", HYGROMETER, (HUMIDITY,)),
        DeviceKind("heartrate", HEART_RATE_METER, (HEART_RATE,)),
        DeviceKind(
            "host", HOST_MONITOR, (CPU_USAGE, MEM_USAGE, HOST_TEMPERATURE, FAN_RPM, VOLTAGE), envelope=True
        ),
        DeviceKind("tracker", TRACKER, (OUTDOOR_TEMPERATURE,), moves=True),
    )
}
"""Every simulated kind by key, in the order a fleet deals them out."""

TYPED_KINDS: tuple[str, ...] = tuple(key for key, kind in KINDS.items() if not (kind.envelope or kind.moves))


class SimDevice:
    """One simulated device: its identity, its message counter, its clock's error and its sensors' state."""

    __slots__ = ("device_id", "homes", "index", "kind", "seq", "skew_us", "values")

    def __init__(self, device_id: str, kind: DeviceKind, rng: random.Random, index: int = 0) -> None:
        self.device_id = device_id
        self.index = index  # its place in the fleet (and in the fleet's lifecycles)
        self.kind = kind
        self.seq = 0
        self.skew_us = 0  # added to the true time in the event times it sends
        self.homes: list[float] = []
        self.values: list[float] = []
        for sensor in kind.sensors:
            home, value = sensor.initial(rng)
            self.homes.append(home)
            self.values.append(value)

    def next_seq(self) -> int:
        """The ``seq`` of the next message (0, 1, 2, ...)."""
        seq = self.seq
        self.seq += 1
        return seq

    def __repr__(self) -> str:
        return f"SimDevice({self.device_id!r}, seq={self.seq})"


def iso_ms(us: int) -> str:
    """RFC 3339 UTC text with milliseconds, as devices send their event time.

    >>> iso_ms(1_680_033_862_123_456)
    '2023-03-28T20:04:22.123Z'
    """
    dt = us_to_datetime(us)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"
