"""Device events: the types of fact the event log keeps about a device, and :class:`DeviceEvent`.

How a twin folds them is in :mod:`fleetstream.domain.device_twin`; the event log and the twin
are described together in :mod:`fleetstream.domain.events`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetstream.domain.shadow import DESIRED, REPORTED

REGISTERED = "registered"
TYPE_CHANGED = "type_changed"
STARTUP = "startup"
MESSAGE = "message"
HEARTBEAT = "heartbeat"
STATUS_CHANGED = "status_changed"
LOCATION_CHANGED = "location_changed"
DESIRED_CHANGED = "desired_changed"
REPORTED_CHANGED = "reported_changed"
SHADOW_EVENTS = {DESIRED_CHANGED: DESIRED, REPORTED_CHANGED: REPORTED}
"""Event type → the shadow section it patches (payload ``{"patch": {...}, "version": n}``)."""


@dataclass(slots=True)
class DeviceEvent:
    """One fact about one device, as the event log keeps it.

    Attributes:
        device_id: The device.
        seq: Number of the event for its device (1, 2, 3 ...): the twin's version once applied.
        ts: Event time it refers to (µs since the epoch, UTC); a timer's deadline for a timer event.
        type: ``registered``, ``type_changed``, ``startup``, ``message``, ``heartbeat``,
            ``status_changed``, ``location_changed``, ``desired_changed``, ``reported_changed``
            (more to come: alerts, predictions).
        payload: Builtins only (JSON-ready).
        position: Log position of the record that caused it (for a timer, the last record before it).

    Example:
        >>> DeviceEvent("d1", 1, 5, "registered", {"device_type": "Thermostat"}, 7).as_dict()["payload"]
        {'device_type': 'Thermostat'}
    """

    device_id: str
    seq: int
    ts: int
    type: str
    payload: dict[str, Any]
    position: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (also what :meth:`from_dict` reads back)."""
        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": self.ts,
            "type": self.type,
            "payload": self.payload,
            "position": self.position,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceEvent:
        """The event of an :meth:`as_dict` view (an event read back from the store)."""
        return cls(
            data["device_id"], data["seq"], data["ts"], data["type"], dict(data["payload"]), data["position"]
        )
