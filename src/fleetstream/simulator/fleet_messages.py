"""The messages a simulated fleet sends: each kind's readings stepped along its random walks, the
precursors a degrading device shows, and the JSON shapes they travel in (a typed message, a
canonical reading, or a host monitor's envelope), stamped with each device's own clock.

:class:`FleetMessages` is the part of :class:`~fleetstream.simulator.fleet.Fleet` that builds
them; the fleet sets up the state declared here.
"""

from __future__ import annotations

import random
from typing import Any

from fleetstream.simulator.lifecycle import SILENT as _SILENT
from fleetstream.simulator.lifecycle import Lifecycles
from fleetstream.simulator.models import (
    HOST_CPU,
    HOST_FAN,
    HOST_MEM,
    HOST_TEMP,
    HOST_UNITS,
    HOST_VOLT,
    SimDevice,
    Walk,
    iso_ms,
)
from fleetstream.simulator.schedule import Lane
from fleetstream.simulator.tracker import Motion

Message = dict[str, Any]
Lanes = Lane[SimDevice]


def _ramp(severity: float, start: float) -> float:
    """0 until ``severity`` reaches ``start``, then rising linearly to 1 at severity 1."""
    return max(0.0, (severity - start) / (1.0 - start))


class FleetMessages:
    """Building the messages of a :class:`~fleetstream.simulator.fleet.Fleet`'s due devices."""

    # Set up by Fleet.__init__ (in the order its draws of ``rng`` need).
    rng: random.Random
    life: Lifecycles
    motions: dict[int, Motion]
    boot: str
    _walks: dict[str, list[Walk]]
    _cpu: Walk
    _mem: Walk
    _fan: Walk
    _volt: Walk
    _temp: Walk
    _seconds: dict[int, str]

    def _due(
        self,
        elapsed_s: float,
        now_us: int,
        ts: str,
        lanes: tuple[Lanes, Lanes, Lanes, Lanes],
        out: list[Message],
    ) -> None:
        """Append the messages due in one set of lanes (those of one rate)."""
        typed, trackers, heartbeats, temperatures = lanes
        life = self.life
        state, silent = life.state, _SILENT
        rng = self.rng
        for d in typed.due(elapsed_s):
            if state[d.index] in silent:
                continue
            sensor = d.kind.sensors[0]
            d.values[0] = self._walks[d.kind.key][0].step(d.values[0], d.homes[0], rng)
            value = d.values[0]
            severity = life.severity(d.index, elapsed_s)
            if severity:  # a failing sensor gets noisy
                value = sensor.bound(value + 3.0 * severity * sensor.spread * rng.gauss(0.0, 1.0))
            out.append(
                {
                    "device_id": d.device_id,
                    "timestamp": ts if not d.skew_us else self._skewed(now_us + d.skew_us),
                    sensor.name: sensor.shown(value),
                    "tag": d.kind.tag,
                    "msg_id": f"{self.boot}-{d.next_seq()}",
                }
            )
        for d in trackers.due(elapsed_s):
            if state[d.index] in silent:
                continue
            severity = life.severity(d.index, elapsed_s)
            out.extend(self._tracker(d, self._stamp(d, ts, now_us), severity, trackers.period_s))
        for d in heartbeats.due(elapsed_s):
            if state[d.index] in silent:
                continue
            out.extend(self._heartbeat(d, self._stamp(d, ts, now_us), life.severity(d.index, elapsed_s)))
        for d in temperatures.due(elapsed_s):
            if state[d.index] in silent:
                continue
            sensor = d.kind.sensors[HOST_TEMP]
            d.values[HOST_TEMP] = self._temp.step(d.values[HOST_TEMP], d.homes[HOST_TEMP], rng)
            # Precursor: the temperature climbs once the fan has slowed for a while.
            hotter = 30.0 * _ramp(life.severity(d.index, elapsed_s), 0.25)
            event = {"temperature": sensor.shown(sensor.bound(d.values[HOST_TEMP] + hotter))}
            out.append(self._envelope(d, "temperature", self._stamp(d, ts, now_us), event))

    def _heartbeat(self, d: SimDevice, ts: str, severity: float) -> list[Message]:
        """A heartbeat envelope, then the host's fan speed and supply voltage as canonical readings."""
        rng, sensors, values, homes = self.rng, d.kind.sensors, d.values, d.homes
        values[HOST_CPU] = self._cpu.step(values[HOST_CPU], homes[HOST_CPU], rng)
        values[HOST_MEM] = self._mem.step(values[HOST_MEM], homes[HOST_MEM], rng)
        values[HOST_FAN] = self._fan.step(values[HOST_FAN], homes[HOST_FAN], rng)
        values[HOST_VOLT] = self._volt.step(values[HOST_VOLT], homes[HOST_VOLT], rng)
        # Precursors, in the order they show: the fan slows from the start of the degradation,
        # load (and temperature) climb from a quarter of the way, the voltage sags once failing.
        cpu, fan, volt = sensors[HOST_CPU], sensors[HOST_FAN], sensors[HOST_VOLT]
        event = {
            "cpu_usage": cpu.shown(cpu.bound(values[HOST_CPU] + 40.0 * _ramp(severity, 0.25))),
            "mem_usage": sensors[HOST_MEM].shown(values[HOST_MEM]),
        }
        out = [self._envelope(d, "heartbeat", ts, event)]
        for sensor, value in (
            (fan, values[HOST_FAN] * (1.0 - 0.7 * severity)),
            (volt, values[HOST_VOLT] - 1.2 * _ramp(severity, 0.5)),
        ):
            out.append(
                self._reading(d, ts, sensor.name, sensor.shown(sensor.bound(value)), HOST_UNITS[sensor.name])
            )
        return out

    def _tracker(self, d: SimDevice, ts: str, severity: float, period_s: float) -> list[Message]:
        """A tracker's position and temperature: three canonical readings, one after the other."""
        rng = self.rng
        motion = self.motions[d.index]
        motion.step(period_s, rng)
        sensor = d.kind.sensors[0]
        d.values[0] = self._walks[d.kind.key][0].step(d.values[0], d.homes[0], rng)
        value = d.values[0]
        if severity:
            value = sensor.bound(value + 3.0 * severity * sensor.spread * rng.gauss(0.0, 1.0))
        units = d.kind.device_type.sensors
        return [
            self._reading(d, ts, "latitude", round(motion.lat, 6), units["latitude"]),
            self._reading(d, ts, "longitude", round(motion.lon, 6), units["longitude"]),
            self._reading(d, ts, "temperature", sensor.shown(value), units["temperature"]),
        ]

    def _reading(self, d: SimDevice, ts: str, sensor: str, value: float, unit: str | None) -> Message:
        return {
            "device_id": d.device_id,
            "timestamp": ts,
            "sensor": sensor,
            "value": value,
            "unit": unit,
            "device_type": d.kind.device_type.name,
            "msg_id": f"{self.boot}-{d.next_seq()}",
        }

    def _stamp(self, device: SimDevice, ts: str, now_us: int) -> str:
        """The event time a device sends: ``ts`` (the text of ``now_us``) unless its clock is off."""
        return ts if not device.skew_us else self._skewed(now_us + device.skew_us)

    def _skewed(self, us: int) -> str:
        # iso_ms(us), formatting each second once: with skewed clocks, every device's text differs.
        second, rest = divmod(us, 1_000_000)
        text = self._seconds.get(second)
        if text is None:
            if len(self._seconds) > 1000:
                self._seconds.clear()
            text = self._seconds[second] = iso_ms(second * 1_000_000)[:-5]
        return f"{text}.{rest // 1000:03d}Z"

    def _envelope(self, device: SimDevice, kind: str, ts: str, event: dict[str, float | int]) -> Message:
        return {
            "device_id": device.device_id,
            "type": kind,
            "ts": ts,
            "event": event,
            "msg_id": f"{self.boot}-{device.next_seq()}",
        }
