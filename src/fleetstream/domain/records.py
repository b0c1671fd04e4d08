"""Canonical records every input format is normalised into.

Timestamps are integers: microseconds since the Unix epoch, UTC. Integer time
is exact, cheap to compare and to bucket, and converts to ``datetime`` only at
the edges (see :mod:`fleetstream.domain.timeutil`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DedupKey = tuple[str, str, int | str]
"""(device_id, sensor or "@" + event kind, msg_id if the device sent one else event time)."""

DEVICE_ID_RULE = "1 to 128 characters of A-Z a-z 0-9 _ . : @ ! -"
_DEVICE_ID = re.compile(r"[A-Za-z0-9_.:@!\-]{1,128}")


def is_valid_device_id(device_id: str) -> bool:
    """Tell whether ``device_id`` follows the id rule real fleets use.

    >>> is_valid_device_id("DevFor!x@0000000001"), is_valid_device_id("a b")
    (True, False)
    """
    return _DEVICE_ID.fullmatch(device_id) is not None


@dataclass(slots=True)
class Reading:
    """One value of one sensor of one device at one event time. Treat it as immutable.

    (Not ``frozen``: a frozen dataclass is three times slower to build, and
    readings are built on the hottest path.)

    Example:
        >>> r = Reading("t-1", 1_700_000_000_000_000, "temperature", 21.5, "°C", "Thermostat")
        >>> r.dedup_key
        ('t-1', 'temperature', 1700000000000000)
    """

    device_id: str
    ts: int
    sensor: str
    value: float
    unit: str | None = None
    device_type: str = "Sensor"
    msg_id: str | None = None

    @property
    def dedup_key(self) -> DedupKey:
        """(device, sensor, msg_id) when the device numbers its messages, else (device, sensor, ts)."""
        return (self.device_id, self.sensor, self.msg_id if self.msg_id is not None else self.ts)


@dataclass(slots=True)
class DeviceMessage:
    """One message as a device sent it: its kind, event time and the readings it carries.

    ``kind`` is ``telemetry`` for plain readings, or the envelope's own type
    (``startup``, ``heartbeat``, ``temperature``). A message may carry no
    reading at all (``startup``): it is still an event of the device.
    ``received_at`` is filled by the gateway, ``seq`` by the engine when the
    message is made durable (its position in the log).
    """

    device_id: str
    ts: int
    kind: str
    device_type: str
    readings: list[Reading]
    msg_id: str | None = None
    received_at: int = 0
    seq: int = 0

    @property
    def dedup_key(self) -> DedupKey:
        """Key of a message that carries no reading (an event such as ``startup``)."""
        return (self.device_id, "@" + self.kind, self.msg_id if self.msg_id is not None else self.ts)
