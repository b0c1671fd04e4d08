"""The built-in device simulator: a fleet of typed devices and host monitors, sent in batches.

::

    Fleet (who, when, what: pure)  →  Delivery (jitter, duplicates, late: pure)
        →  Simulator (one loop, per-tick batches)  →  Transport  ├─ InProcessTransport
                                                                 └─ HttpTransport
    what the server acknowledged  →  GroundTruth (distinct readings per sensor and window)
    each device's state (Lifecycles: running, degraded, failing...)  →  failure_rows (failures file)

Example:
    >>> from fleetstream.domain.clock import ManualClock
    >>> fleet = Fleet(5, rate=1.0, seed=1)
    >>> sorted({m["device_id"].split("-")[0] for m in fleet.advance(15.0, ManualClock().now_us())})
    ['barometer', 'heartrate', 'host', 'hygrometer', 'thermostat']
    >>> sorted(parse_kinds("tracker,host"))
    ['host', 'tracker']
"""

from fleetstream.errors import DeliveryFailed
from fleetstream.simulator.delivery import DeliveryOptions, parse_duration
from fleetstream.simulator.failures import failure_rows, write_failures
from fleetstream.simulator.fleet import Fleet, deal_kinds, parse_kinds
from fleetstream.simulator.lifecycle import STATES, LifecycleOptions, Lifecycles
from fleetstream.simulator.models import KINDS, TYPED_KINDS, DeviceKind, SensorModel
from fleetstream.simulator.simulator import Simulator
from fleetstream.simulator.tracker import Region
from fleetstream.simulator.transports import (
    HttpTransport,
    InProcessTransport,
    Submit,
    Transport,
    transport_for,
)
from fleetstream.simulator.truth import GroundTruth, write_truth

__all__ = [
    "KINDS",
    "STATES",
    "TYPED_KINDS",
    "DeliveryFailed",
    "DeliveryOptions",
    "DeviceKind",
    "Fleet",
    "GroundTruth",
    "HttpTransport",
    "InProcessTransport",
    "LifecycleOptions",
    "Lifecycles",
    "Region",
    "SensorModel",
    "Simulator",
    "Submit",
    "Transport",
    "deal_kinds",
    "failure_rows",
    "parse_duration",
    "parse_kinds",
    "transport_for",
    "write_failures",
    "write_truth",
]
