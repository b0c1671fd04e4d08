"""The device twin: the state of one device, a commutative fold of its events and stored readings.

:class:`DeviceTwin` applies each :class:`~fleetstream.domain.device_event.DeviceEvent`, observes
stored rows, and is rebuilt from both logs by :meth:`DeviceTwin.replay`; why the fold may take them
in separate passes is in :mod:`fleetstream.domain.events`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fleetstream.domain.batch import Batch
from fleetstream.domain.device_event import (
    HEARTBEAT,
    LOCATION_CHANGED,
    MESSAGE,
    REGISTERED,
    SHADOW_EVENTS,
    STARTUP,
    STATUS_CHANGED,
    TYPE_CHANGED,
    DeviceEvent,
)
from fleetstream.domain.shadow import DESIRED, Document, merge, merge_metadata

ONLINE = "online"
IDLE = "idle"
OFFLINE = "offline"
GENERIC_TYPE = "Sensor"
"""The device type a reading gets when its format names none; a specific type replaces it."""

_NO_DOCUMENT: Document = {}
"""The shadow documents of every twin that has none: shared (four empty dicts per twin would cost
25 MB for 100,000 devices), which is safe because a patch builds new documents, never changes one."""


def _no_document() -> Document:
    return _NO_DOCUMENT


NEVER = -(2**62)
"""``last_seen`` of a twin that has seen nothing (an int keeps the hot comparison free of ``None``)."""

Row = tuple[int, int, str, float, object]
"""A stored reading as replay takes it: (log position, event time, sensor, value, message key).

The message key is shared by the rows of one message (the engine's message
number, or the message's first log position) and tells messages apart.
"""


@dataclass(slots=True)
class DeviceTwin:
    """The state of one device: a fold over its events and its stored readings.

    ``status`` is ``online``, ``idle`` or ``offline`` (a twin starts offline:
    nothing was heard yet). ``sensors`` maps a sensor to its last value and
    that value's event time: the newest event time wins, a late old reading
    never overwrites a newer one. ``location`` is (lat, lon, event time).
    ``desired`` and ``reported`` are the shadow's documents (see
    :mod:`fleetstream.domain.shadow`), each with its metadata (when each leaf was
    last set, µs) and its own version (the number of changes to it).
    ``version`` is the ``seq`` of the last applied event; ``position`` the
    highest log position applied (the processor skips records at or below it,
    which makes replaying the log after a crash idempotent).

    Example:
        >>> twin = DeviceTwin("t-1")
        >>> twin.apply(DeviceEvent("t-1", 1, 10, "registered", {"device_type": "Tracker"}, 3))
        >>> twin.observe_row(3, 10, "temperature", 4.5, first_of_message=True)
        >>> twin.observe_row(4, 8, "temperature", 9.9, first_of_message=True)  # older: kept out
        >>> twin.sensors["temperature"], twin.messages, twin.readings, twin.version, twin.position
        ((4.5, 10), 2, 2, 1, 4)
    """

    device_id: str
    device_type: str = GENERIC_TYPE
    status: str = OFFLINE
    first_seen: int | None = None
    last_seen: int = NEVER
    sensors: dict[str, tuple[float, int]] = field(default_factory=dict)
    location: tuple[float, float, int] | None = None
    messages: int = 0
    readings: int = 0
    version: int = 0
    position: int = 0
    last_startup: int | None = None
    last_heartbeat: int | None = None
    heartbeat: dict[str, float] | None = None
    desired: Document = field(default_factory=_no_document)
    reported: Document = field(default_factory=_no_document)
    desired_meta: Document = field(default_factory=_no_document)
    reported_meta: Document = field(default_factory=_no_document)
    desired_version: int = 0
    reported_version: int = 0
    # The deadline of the processor's pending timer for this twin: bookkeeping, not state.
    timer: int | None = field(default=None, compare=False, repr=False)

    def apply(self, event: DeviceEvent) -> None:
        """Fold one event in; an event already applied (``seq`` <= ``version``) changes nothing.

        A gap in the numbers is accepted: a twin "as of" a time is rebuilt from the
        events up to that event time, which need not be a prefix of the log.
        """
        if event.seq <= self.version:
            return
        kind, payload, ts = event.type, event.payload, event.ts
        if kind == STATUS_CHANGED:
            self.status = payload["to"]
        elif kind == LOCATION_CHANGED:
            self.location = (payload["lat"], payload["lon"], ts)
        elif kind == HEARTBEAT:
            if self.last_heartbeat is None or ts >= self.last_heartbeat:
                self.last_heartbeat = ts
                self.heartbeat = dict(payload)
        elif kind == REGISTERED:
            self.device_type = payload["device_type"]
            self.first_seen = ts
        elif kind == TYPE_CHANGED:
            self.device_type = payload["to"]
        elif kind in SHADOW_EVENTS:
            self.patch_shadow(SHADOW_EVENTS[kind], payload["patch"], ts, payload["version"])
        elif kind in (STARTUP, MESSAGE):  # a message without readings: its event is its only record
            if kind == STARTUP and (self.last_startup is None or ts >= self.last_startup):
                self.last_startup = ts
            self.messages += 1
            if ts > self.last_seen:
                self.last_seen = ts
        self.version = event.seq
        if event.position > self.position:
            self.position = event.position

    def patch_shadow(self, section: str, patch: Document, ts: int, version: int) -> None:
        """Merge a patch into ``desired`` or ``reported`` (set at ``ts``; the section is then at ``version``).

        Example:
            >>> twin = DeviceTwin("d", desired={"a": 1, "b": 2}, desired_meta={"a": 5, "b": 5})
            >>> twin.patch_shadow("desired", {"b": None, "c": {"x": 1}}, 9, 1)
            >>> twin.desired, twin.desired_meta, twin.desired_version
            ({'a': 1, 'c': {'x': 1}}, {'a': 5, 'c': {'x': 9}}, 1)
        """
        if section == DESIRED:
            self.desired = merge(self.desired, patch)
            self.desired_meta = merge_metadata(self.desired_meta, patch, ts)
            self.desired_version = version
        else:
            self.reported = merge(self.reported, patch)
            self.reported_meta = merge_metadata(self.reported_meta, patch, ts)
            self.reported_version = version

    def observe_row(
        self, position: int, ts: int, sensor: str, value: float, *, first_of_message: bool
    ) -> None:
        """Fold one stored reading in (``first_of_message`` on the first row of each message)."""
        old = self.sensors.get(sensor)
        if old is None or ts >= old[1]:
            self.sensors[sensor] = (value, ts)
        if ts > self.last_seen:
            self.last_seen = ts
        self.readings += 1
        if first_of_message:
            self.messages += 1
        if position > self.position:
            self.position = position

    @classmethod
    def replay(cls, device_id: str, events: Iterable[DeviceEvent], rows: Batch | Iterable[Row]) -> DeviceTwin:
        """Rebuild a twin from its event log and its stored readings (rows in log order).

        ``rows`` are :data:`Row` tuples, or a :class:`~fleetstream.domain.batch.Batch` of the
        device's rows (its ``msg`` numbers tell the messages apart).
        """
        twin = cls(device_id)
        for event in events:
            twin.apply(event)
        if isinstance(rows, Batch):
            positions = rows.seq or [0] * len(rows)
            rows = zip(positions, rows.ts, rows.sensor, rows.value, rows.msg, strict=True)
        previous: object = object()  # equal to no message key
        for position, ts, sensor, value, message in rows:
            twin.observe_row(position, ts, sensor, value, first_of_message=message != previous)
            previous = message
        return twin

    def as_dict(self) -> dict[str, Any]:
        """JSON view (times in µs since the epoch)."""
        location = self.location
        return {
            "device_id": self.device_id,
            "device_type": self.device_type,
            "status": self.status,
            "first_seen": self.first_seen,
            "last_seen": None if self.last_seen == NEVER else self.last_seen,
            "sensors": {name: {"value": v, "ts": t} for name, (v, t) in self.sensors.items()},
            "location": None if location is None else dict(zip(("lat", "lon", "ts"), location, strict=True)),
            "messages": self.messages,
            "readings": self.readings,
            "version": self.version,
            "position": self.position,
            "last_startup": self.last_startup,
            "heartbeat": None
            if self.heartbeat is None
            else {"ts": self.last_heartbeat, "values": dict(self.heartbeat)},
            "shadow": self.shadow_state(),
        }

    def to_state(self) -> dict[str, Any]:
        """Builtins only, for a snapshot store; :meth:`from_state` reads it back."""
        return {
            "device_id": self.device_id,
            "device_type": self.device_type,
            "status": self.status,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "sensors": {name: [v, t] for name, (v, t) in self.sensors.items()},
            "location": None if self.location is None else list(self.location),
            "messages": self.messages,
            "readings": self.readings,
            "version": self.version,
            "position": self.position,
            "last_startup": self.last_startup,
            "last_heartbeat": self.last_heartbeat,
            "heartbeat": None if self.heartbeat is None else dict(self.heartbeat),
            # left out while empty: most fleets never use it, and every stored twin would carry it
            **({"shadow": self.shadow_state()} if self.desired_version or self.reported_version else {}),
        }

    def shadow_state(self) -> dict[str, Any]:
        """The shadow's documents, metadata and versions (builtins; they are never changed in place)."""
        return {
            "desired": self.desired,
            "reported": self.reported,
            "desired_meta": self.desired_meta,
            "reported_meta": self.reported_meta,
            "desired_version": self.desired_version,
            "reported_version": self.reported_version,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DeviceTwin:
        """The twin of a :meth:`to_state` dict.

        Example:
            >>> twin = DeviceTwin("d", sensors={"t": (1.5, 9)}, location=(1.0, 2.0, 9), version=3,
            ...     desired={"n": {"x": 1}}, desired_meta={"n": {"x": 9}}, desired_version=2)
            >>> DeviceTwin.from_state(twin.to_state()) == twin
            True
        """
        location = state["location"]
        heartbeat = state["heartbeat"]
        shadow = state.get("shadow") or {}  # absent from twins stored before the shadow existed
        return cls(
            device_id=state["device_id"],
            device_type=state["device_type"],
            status=state["status"],
            first_seen=state["first_seen"],
            last_seen=state["last_seen"],
            sensors={name: (float(v), int(t)) for name, (v, t) in state["sensors"].items()},
            location=None if location is None else (float(location[0]), float(location[1]), int(location[2])),
            messages=state["messages"],
            readings=state["readings"],
            version=state["version"],
            position=state["position"],
            last_startup=state["last_startup"],
            last_heartbeat=state["last_heartbeat"],
            heartbeat=None if heartbeat is None else dict(heartbeat),
            desired=shadow.get("desired") or _NO_DOCUMENT,
            reported=shadow.get("reported") or _NO_DOCUMENT,
            desired_meta=shadow.get("desired_meta") or _NO_DOCUMENT,
            reported_meta=shadow.get("reported_meta") or _NO_DOCUMENT,
            desired_version=shadow.get("desired_version", 0),
            reported_version=shadow.get("reported_version", 0),
        )
