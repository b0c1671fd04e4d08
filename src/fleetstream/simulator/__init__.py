"""The built-in device simulator: a fleet of typed devices and host monitors, sent in batches.

::

    Fleet (who, when, what: pure)  →  Delivery (jitter, duplicates, late: pure)
        →  Simulator (one loop, per-tick batches)  →  Transport  ├─ InProcessTransport
                                                                 └─ HttpTransport
    what the server acknowledged  →  GroundTruth (distinct readings per sensor and window)

Example:
    >>> from fleetstream.domain.clock import ManualClock
    >>> fleet = Fleet(5, rate=1.0, seed=1)
    >>> sorted({m["device_id"].split("-")[0] for m in fleet.advance(15.0, ManualClock().now_us())})
    ['barometer', 'heartrate', 'host', 'hygrometer', 'thermostat']
"""

from fleetstream.errors import DeliveryFailed
from fleetstream.simulator.delivery import DeliveryOptions, parse_duration
from fleetstream.simulator.fleet import Fleet, deal_kinds
from fleetstream.simulator.models import KINDS, TYPED_KINDS, DeviceKind, SensorModel
from fleetstream.simulator.simulator import Simulator
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
    "TYPED_KINDS",
    "DeliveryFailed",
    "DeliveryOptions",
    "DeviceKind",
    "Fleet",
    "GroundTruth",
    "HttpTransport",
    "InProcessTransport",
    "SensorModel",
    "Simulator",
    "Submit",
    "Transport",
    "deal_kinds",
    "parse_duration",
    "transport_for",
    "write_truth",
]
