"""The state of one partition's twins, the events that change it, and the status timers.

:class:`TwinTimers` holds what :class:`~fleetstream.domain.twin.TwinProcessor` keeps between
batches (resident and stored-away twins, the timer and eviction heaps, the partition time) and
the steps every path shares: emitting an event (applied to its twin as it is emitted),
registering a device, and arming, firing and re-arming the timers by which a silent device goes
``idle``, then ``offline``, then leaves memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any

from fleetstream.domain.events import (
    GENERIC_TYPE,
    IDLE,
    OFFLINE,
    ONLINE,
    REGISTERED,
    STATUS_CHANGED,
    TYPE_CHANGED,
    DeviceEvent,
    DeviceTwin,
)

_S = 1_000_000


@dataclass(frozen=True, slots=True)
class TwinSettings:
    """How long silence lasts before a status changes, and when twins leave memory (all µs).

    Example:
        >>> TwinSettings(idle_after_us=60_000_000).offline_after_us
        120000000
        >>> TwinSettings(idle_after_us=5, offline_after_us=3, evict_after_us=10)
        Traceback (most recent call last):
        ValueError: twin settings: idle_after < offline_after <= evict_after must hold, got 5, 3, 10
    """

    idle_after_us: int = 30 * _S
    offline_after_us: int = 120 * _S
    evict_after_us: int = 600 * _S
    idle_timeout_us: int = 10 * _S
    max_ahead_us: int = 5 * _S

    def __post_init__(self) -> None:
        if not 0 < self.idle_after_us < self.offline_after_us <= self.evict_after_us:
            msg = (
                "twin settings: idle_after < offline_after <= evict_after must hold, got "
                f"{self.idle_after_us}, {self.offline_after_us}, {self.evict_after_us}"
            )
            raise ValueError(msg)
        if self.idle_timeout_us <= 0 or self.max_ahead_us < 0:
            msg = "twin settings: idle_timeout must be positive and max_ahead not negative"
            raise ValueError(msg)


class TwinTimers:
    """The twins' state and the event and timer steps; see :class:`~fleetstream.domain.twin.TwinProcessor`."""

    def __init__(self, settings: TwinSettings) -> None:
        self.settings = settings
        self._twins: dict[str, DeviceTwin] = {}
        self._absent: set[str] = set()  # known, stored, not in memory
        self._timers: list[tuple[int, str]] = []  # (deadline, device): status timers
        self._evictions: list[tuple[int, str]] = []  # (time to leave memory, device)
        self._dirty: set[str] = set()
        self._pt: int | None = None
        self._position = 0  # log position of the last record processed
        self._heard_at: int | None = None  # wall time a record last arrived
        self._registered: set[str] = set()  # devices first seen since the last take_registered()

    def _emit(
        self, out: list[DeviceEvent], twin: DeviceTwin, kind: str, ts: int, payload: dict[str, Any], at: int
    ) -> None:
        event = DeviceEvent(twin.device_id, twin.version + 1, ts, kind, payload, at)
        twin.apply(event)
        out.append(event)
        self._dirty.add(twin.device_id)

    def _register(
        self, out: list[DeviceEvent], device: str, device_type: str, ts: int, at: int
    ) -> DeviceTwin:
        if device in self._absent:
            msg = f"the twin of {device!r} is stored: load it (see missing()) before its next record"
            raise ValueError(msg)
        twin = self._twins[device] = DeviceTwin(device)
        self._registered.add(device)
        self._emit(out, twin, REGISTERED, ts, {"device_type": device_type}, at)
        return twin

    def _retype(self, out: list[DeviceEvent], twin: DeviceTwin, device_type: str, ts: int, at: int) -> None:
        if twin.device_type == GENERIC_TYPE and device_type != GENERIC_TYPE:
            self._emit(out, twin, TYPE_CHANGED, ts, {"from": twin.device_type, "to": device_type}, at)

    def _status_at(self, last_seen: int, pt: int) -> str:
        if pt <= last_seen + self.settings.idle_after_us:
            return ONLINE
        if pt <= last_seen + self.settings.offline_after_us:
            return IDLE
        return OFFLINE

    def _deadline(self, twin: DeviceTwin) -> int | None:
        """When the twin's status lapses (``None`` once offline)."""
        if twin.status == ONLINE:
            return twin.last_seen + self.settings.idle_after_us
        if twin.status == IDLE:
            return twin.last_seen + self.settings.offline_after_us
        return None

    def _restatus(
        self, out: list[DeviceEvent], twin: DeviceTwin, ts: int, at: int, pt: int, new: bool
    ) -> None:
        """After a message: the status its event time gives (a late reading may not bring a twin back)."""
        status = self._status_at(twin.last_seen, pt)
        if status != twin.status:
            self._emit(out, twin, STATUS_CHANGED, ts, {"from": twin.status, "to": status}, at)
            self._arm(twin)
        elif new:
            self._arm(twin)

    def _arm(self, twin: DeviceTwin) -> None:
        """Make sure a timer is pending no later than the twin's deadline (or its eviction, once offline)."""
        deadline = self._deadline(twin)
        if deadline is None:
            heappush(self._evictions, (twin.last_seen + self.settings.evict_after_us, twin.device_id))
        elif twin.timer is None or deadline < twin.timer:
            twin.timer = deadline
            heappush(self._timers, (deadline, twin.device_id))

    def _fire(self, out: list[DeviceEvent], pt: int) -> None:
        """Fire every timer whose deadline the partition time ``pt`` has passed, in deadline order."""
        timers, twins = self._timers, self._twins
        while timers and timers[0][0] < pt:
            deadline, device = heappop(timers)
            twin = twins.get(device)
            if twin is None or twin.timer != deadline:
                continue  # superseded by an earlier timer, or the twin left memory
            twin.timer = None
            current = self._deadline(twin)
            if current is None:
                continue
            if current > deadline:  # it sent since: wait for the new deadline
                twin.timer = current
                heappush(timers, (current, device))
                continue
            status = IDLE if twin.status == ONLINE else OFFLINE
            self._emit(
                out, twin, STATUS_CHANGED, deadline, {"from": twin.status, "to": status}, self._position
            )
            self._arm(twin)

    def _evict(self, pt: int) -> list[DeviceTwin]:
        evictions, twins = self._evictions, self._twins
        evicted: list[DeviceTwin] = []
        while evictions and evictions[0][0] < pt:
            due, device = heappop(evictions)
            twin = twins.get(device)
            if twin is None or twin.status != OFFLINE:
                continue
            current = twin.last_seen + self.settings.evict_after_us
            if current > due:
                heappush(evictions, (current, device))
                continue
            del twins[device]
            self._absent.add(device)
            self._dirty.discard(device)
            evicted.append(twin)
        return evicted
