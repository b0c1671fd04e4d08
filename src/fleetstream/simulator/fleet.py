"""A fleet of simulated devices: who they are, when each is due, and the messages they send.

Pure logic, no I/O and no asyncio: time comes in as arguments, so a test
drives a fleet with a manual clock and the :class:`~fleetstream.simulator.Simulator`
drives it with the real one.

This module holds the fleet itself: its devices, their schedule and the changes
made at run time; the messages they send are built in
:mod:`~fleetstream.simulator.fleet_messages`, their kinds dealt in
:mod:`~fleetstream.simulator.fleet_kinds`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from fleetstream.errors import ConfigError
from fleetstream.simulator.delivery import Draws
from fleetstream.simulator.fleet_kinds import deal_kinds as deal_kinds
from fleetstream.simulator.fleet_kinds import parse_kinds as parse_kinds
from fleetstream.simulator.fleet_messages import FleetMessages, Lanes, Message
from fleetstream.simulator.lifecycle import STATES, LifecycleOptions, Lifecycles, Transition
from fleetstream.simulator.models import (
    HOST_CPU,
    HOST_FAN,
    HOST_MEM,
    HOST_TEMP,
    HOST_VOLT,
    KINDS,
    SimDevice,
    iso_ms,
)
from fleetstream.simulator.schedule import Lane
from fleetstream.simulator.tracker import Motion, Region

HEARTBEAT_EVERY_S = 15.0
"""A host monitor's heartbeat period at rate 1 (divided by the rate)."""
TEMPERATURE_EVERY_S = 3.0
"""A host monitor's temperature period at rate 1 (divided by the rate)."""
# Lifecycles draw from their own generator, seeded from the fleet's seed with this added, so
# turning failures on or off leaves the ids, phases and healthy values of a seed as they were.
_LIFE_SEED = 0x5EED_11FE


class Fleet(FleetMessages):
    """Devices of every kind, their schedule and their values.

    Typed kinds send ``rate`` messages per device per second. Host monitors
    send ``startup`` once (at the first :meth:`advance`), a heartbeat every
    15 s and their temperature every 3 s, both periods divided by ``rate``
    (so ``rate=2`` doubles every device's pace, hosts included). Each device
    gets a random phase, so a fleet's load is spread over the period instead
    of arriving at once.

    Given a ``seed`` (and the same calls), the fleet's ids, phases and values
    are the same every time.

    With ``clock_skew_s``, each device's clock is wrong by a fixed offset,
    drawn uniformly in ``[-clock_skew_s, +clock_skew_s]`` (whole milliseconds)
    from the seed and the device id: its event times are the true time plus
    that offset. The offsets use no draw of the fleet's own generator, so
    ids, phases and values are those of the same seed without skew.

    Example:
        >>> fleet = Fleet(2, rate=1.0, seed=7, kinds={"thermostat": 1})
        >>> sent = fleet.advance(2.0, 1_680_033_862_000_000)
        >>> sorted((m["device_id"], m["msg_id"]) for m in sent)[:2]
        [('thermostat-0001', 'lfsos8ds-0'), ('thermostat-0001', 'lfsos8ds-1')]
    """

    def __init__(
        self,
        devices: int,
        rate: float = 1.0,
        seed: int | None = None,
        kinds: Mapping[str, float] | None = None,
        *,
        clock_skew_s: float = 0.0,
        lifecycle: LifecycleOptions | None = None,
        region: Region | None = None,
    ) -> None:
        if devices < 0:
            msg = f"the number of devices must be >= 0, got {devices}"
            raise ConfigError(msg)
        if not rate > 0:
            msg = f"the rate must be > 0 messages per device per second, got {rate}"
            raise ConfigError(msg)
        if not clock_skew_s >= 0:
            msg = f"the clock skew must be >= 0 s, got {clock_skew_s}"
            raise ConfigError(msg)
        self.rate = rate
        self.rng = random.Random(seed)
        numbers: dict[str, int] = {}
        self._numbers = numbers  # the last number given per kind: added devices continue from it
        self.devices: list[SimDevice] = []  # every device ever, by index (removed ones too)
        for kind in deal_kinds(devices, kinds):
            numbers[kind.key] = numbers.get(kind.key, 0) + 1
            device_id = f"{kind.key}-{numbers[kind.key]:04d}"
            self.devices.append(SimDevice(device_id, kind, self.rng, len(self.devices)))
        if clock_skew_s > 0:
            draws = Draws(random.getrandbits(64) if seed is None else seed)
            for d in self.devices:
                d.skew_us = round((2.0 * draws.device_skew(d.device_id) - 1.0) * clock_skew_s * 1000) * 1000
        self.hosts = [d for d in self.devices if d.kind.envelope]
        typed = [d for d in self.devices if not (d.kind.envelope or d.kind.moves)]
        trackers = [d for d in self.devices if d.kind.moves]

        self.typed = self._lane(1.0 / rate, typed)
        self.trackers = self._lane(1.0 / rate, trackers)
        self.region = region or Region()
        self.motions = {d.index: Motion(self.region, self.rng) for d in trackers}
        life_seed = random.getrandbits(64) if seed is None else seed + _LIFE_SEED
        self.life = Lifecycles(len(self.devices), lifecycle or LifecycleOptions(), random.Random(life_seed))
        self.transitions: list[Transition] = []  # every state change so far, in time order
        self.origin_us: int | None = None  # the wall clock at elapsed 0
        self.heartbeats = self._lane(HEARTBEAT_EVERY_S / rate, self.hosts)
        self.temperatures = self._lane(TEMPERATURE_EVERY_S / rate, self.hosts)
        self.active = {d.device_id: d for d in self.devices}
        """The devices in the fleet now, by id."""
        self.rates: dict[int, float] = {}  # device index → its own rate, when not the fleet's
        # Lanes per rate: (typed, trackers, heartbeats, temperatures). A device given a rate of its
        # own moves to the lanes of that rate, so the schedule stays a few lanes, not a timer each.
        self.lanes: dict[float, tuple[Lanes, Lanes, Lanes, Lanes]] = {
            rate: (self.typed, self.trackers, self.heartbeats, self.temperatures)
        }
        self._new_hosts: list[SimDevice] = []  # hosts added since the last advance: send startup
        # One walk per (kind, sensor), stepped at the pace its values are sent.
        self._walks = {
            key: [s.walk(self.typed.period_s) for s in kind.sensors]
            for key, kind in KINDS.items()
            if not kind.envelope
        }
        host = KINDS["host"].sensors
        self._cpu = host[HOST_CPU].walk(self.heartbeats.period_s)
        self._mem = host[HOST_MEM].walk(self.heartbeats.period_s)
        self._fan = host[HOST_FAN].walk(self.heartbeats.period_s)
        self._volt = host[HOST_VOLT].walk(self.heartbeats.period_s)
        self._temp = host[HOST_TEMP].walk(self.temperatures.period_s)
        self._started = False
        self._seconds: dict[int, str] = {}  # epoch second → its text, for skewed event times
        # Message ids are "<boot>-<seq>": seq counts from 0 per device and boot is the start time,
        # like a device's boot counter, so a second run against the same server is not mistaken
        # for re-sends of the first (the server dedups on the msg_id).
        self.boot = ""

    def _lane(self, period_s: float, devices: list[SimDevice]) -> Lane[SimDevice]:
        return Lane(period_s, [(self.rng.random() * period_s, d) for d in devices])

    def __len__(self) -> int:
        return len(self.active)

    @property
    def messages_per_s(self) -> float:
        """Messages per second the whole fleet sends on average."""
        total = 0.0
        for typed, trackers, heartbeats, temperatures in self.lanes.values():
            # A host sends a heartbeat envelope and two readings, trackers three readings.
            total += len(typed) / typed.period_s + 3 * len(trackers) / trackers.period_s
            total += 3 * len(heartbeats) / heartbeats.period_s + len(temperatures) / temperatures.period_s
        return total

    def advance(self, elapsed_s: float, now_us: int) -> list[Message]:
        """The messages due before ``elapsed_s`` seconds since the start, stamped ``now_us``.

        Args:
            elapsed_s: seconds since the fleet started (a monotonic clock's difference).
            now_us: the wall clock now (microseconds, UTC): the event time of every message,
                plus the device's clock skew if it has one.
        """
        ts = iso_ms(now_us)
        out: list[Message] = []
        if not self._started:
            self._started = True
            self.boot = _base36(now_us // 1000)
            self.origin_us = now_us - round(elapsed_s * 1_000_000)
            out.extend(self._envelope(d, "startup", self._stamp(d, ts, now_us), {}) for d in self.hosts)
        if self._new_hosts:
            new, self._new_hosts = self._new_hosts, []
            out.extend(self._envelope(d, "startup", self._stamp(d, ts, now_us), {}) for d in new)
        self.transitions.extend(self.life.advance(elapsed_s))
        for typed, trackers, heartbeats, temperatures in self.lanes.values():
            self._due(elapsed_s, now_us, ts, (typed, trackers, heartbeats, temperatures), out)
        return out

    # Changes at run time (the control API). ``now_s`` is the fleet's elapsed time now: a change
    # takes effect from there, and the lanes keep their phases, so nothing already due is repeated.

    def add(self, kind: str, count: int, now_s: float) -> list[SimDevice]:
        """Add ``count`` devices of ``kind``, numbered on from the kind's last; they start at ``now_s``.

        Raises:
            ConfigError: an unknown kind or a count below 1.
        """
        if kind not in KINDS:
            msg = f"unknown device kind {kind!r}: expected one of {', '.join(KINDS)}"
            raise ConfigError(msg)
        if count < 1:
            msg = f"the number of devices to add must be >= 1, got {count}"
            raise ConfigError(msg)
        model = KINDS[kind]
        added: list[SimDevice] = []
        for index in self.life.add(count, now_s):
            self._numbers[kind] = self._numbers.get(kind, 0) + 1
            d = SimDevice(f"{kind}-{self._numbers[kind]:04d}", model, self.rng, index)
            self.devices.append(d)
            self.active[d.device_id] = d
            if model.moves:
                self.motions[index] = Motion(self.region, self.rng)
            self._place(d, self.rate, now_s)
            added.append(d)
        if self._started:
            self._new_hosts.extend(d for d in added if d.kind.envelope)
        return added

    def remove(self, device_ids: list[str], now_s: float) -> list[str]:
        """Take devices out of the fleet (they stop sending; ids not in the fleet are ignored)."""
        gone = {self.active.pop(i) for i in device_ids if i in self.active}
        for lanes in self.lanes.values():
            for lane in lanes:
                lane.remove(gone)
        self.hosts = [d for d in self.hosts if d not in gone]
        self._new_hosts = [d for d in self._new_hosts if d not in gone]
        self.transitions.extend(self.life.retire({d.index for d in gone}, now_s))
        for d in gone:
            self.rates.pop(d.index, None)
        return sorted(d.device_id for d in gone)

    def rate_of(self, device: SimDevice) -> float:
        """A device's rate: its own if it was given one, else the fleet's."""
        return self.rates.get(device.index, self.rate)

    def set_rate(self, device_id: str, rate: float, now_s: float) -> None:
        """Give a device a rate of its own (as the fleet's ``rate``: hosts' periods are divided by it)."""
        if not (rate > 0 and math.isfinite(rate)):
            msg = f"the rate must be a finite number > 0, got {rate}"
            raise ConfigError(msg)
        d = self.active[device_id]
        for lanes in self.lanes.values():
            for lane in lanes:
                lane.remove({d})
        if rate == self.rate:
            self.rates.pop(d.index, None)
        else:
            self.rates[d.index] = rate
        self._place(d, rate, now_s)

    def force(self, device_id: str, state: str, now_s: float) -> None:
        """Put a device in a lifecycle state now (``degraded``, ``failing``, ``offline``, ...)."""
        self.transitions.append(self.life.force(self.active[device_id].index, STATES.index(state), now_s))

    def move_to(self, device_id: str, lat: float, lon: float) -> None:
        """Put a tracker at a point of its region; it moves on from there.

        Raises:
            ConfigError: the device is not a tracker, or the point is outside the region.
        """
        d = self.active[device_id]
        if not d.kind.moves:
            msg = f"{device_id} is a {d.kind.key}, not a tracker: only trackers move"
            raise ConfigError(msg)
        if not self.region.contains(lat, lon):
            r = self.region
            msg = (
                f"({lat}, {lon}) is outside the region: "
                f"latitude {r.south}..{r.north}, longitude {r.west}..{r.east}"
            )
            raise ConfigError(msg)
        motion = self.motions[d.index]
        motion.lat, motion.lon = lat, lon

    def _place(self, d: SimDevice, rate: float, now_s: float) -> None:
        """Schedule a device in the lanes of ``rate`` (made on first use), at a random phase."""
        lanes = self.lanes.get(rate)
        if lanes is None:
            periods = (1.0 / rate, 1.0 / rate, HEARTBEAT_EVERY_S / rate, TEMPERATURE_EVERY_S / rate)
            typed, trackers, heartbeats, temperatures = (Lane[SimDevice](p, [], now_s) for p in periods)
            lanes = self.lanes[rate] = (typed, trackers, heartbeats, temperatures)
        typed, trackers, heartbeats, temperatures = lanes
        chosen = (heartbeats, temperatures) if d.kind.envelope else (trackers,) if d.kind.moves else (typed,)
        for lane in chosen:
            lane.add(self.rng.random() * lane.period_s, d)
        if d.kind.envelope and d not in self.hosts:
            self.hosts.append(d)

    def skip(self, elapsed_s: float) -> int:
        """Give up the occurrences due before ``elapsed_s`` (after a stall); how many were dropped."""
        return sum(lane.skip(elapsed_s) for lanes in self.lanes.values() for lane in lanes)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
