"""Device events and the device twin they fold into (event sourcing).

A :class:`DeviceEvent` is an append-only fact about one device, numbered per
device (``seq`` 1, 2, 3 ...). A :class:`DeviceTwin` is the fold of those events
plus the stored readings: :meth:`DeviceTwin.apply` sets every field an event
carries (type, status, location, last startup and heartbeat), and
:meth:`DeviceTwin.observe_row` folds what the readings table already records
(last value per sensor, counters, last seen), so no event is written per
reading. :meth:`DeviceTwin.replay` rebuilds a twin from the two logs alone.

Every field is a commutative fold (a maximum, a count, or "newest event time
wins" with ties going to the later log position), so applying the events and
the rows in separate passes gives the twin that was kept live.

The events live in :mod:`~fleetstream.domain.device_event`, the twin in
:mod:`~fleetstream.domain.device_twin`; this module re-exports both, which the
processors, the adapters, the API and the tests import from it.
"""

from __future__ import annotations

from fleetstream.domain.device_event import DESIRED_CHANGED as DESIRED_CHANGED
from fleetstream.domain.device_event import HEARTBEAT as HEARTBEAT
from fleetstream.domain.device_event import LOCATION_CHANGED as LOCATION_CHANGED
from fleetstream.domain.device_event import MESSAGE as MESSAGE
from fleetstream.domain.device_event import REGISTERED as REGISTERED
from fleetstream.domain.device_event import REPORTED_CHANGED as REPORTED_CHANGED
from fleetstream.domain.device_event import SHADOW_EVENTS as SHADOW_EVENTS
from fleetstream.domain.device_event import STARTUP as STARTUP
from fleetstream.domain.device_event import STATUS_CHANGED as STATUS_CHANGED
from fleetstream.domain.device_event import TYPE_CHANGED as TYPE_CHANGED
from fleetstream.domain.device_event import DeviceEvent as DeviceEvent
from fleetstream.domain.device_twin import GENERIC_TYPE as GENERIC_TYPE
from fleetstream.domain.device_twin import IDLE as IDLE
from fleetstream.domain.device_twin import NEVER as NEVER
from fleetstream.domain.device_twin import OFFLINE as OFFLINE
from fleetstream.domain.device_twin import ONLINE as ONLINE
from fleetstream.domain.device_twin import DeviceTwin as DeviceTwin
from fleetstream.domain.device_twin import Row as Row
