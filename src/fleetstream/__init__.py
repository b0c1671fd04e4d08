"""fleetstream: device telemetry, from a simulated or real fleet to live queries and streams."""

from fleetstream.config import Settings, load_settings
from fleetstream.domain.clock import Clock, ManualClock, SystemClock
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.errors import (
    BusUnavailable,
    ConfigError,
    FleetstreamError,
    InvalidInput,
    InvalidReading,
    Overloaded,
    StoreError,
)

__version__ = "0.1.0"

__all__ = [
    "BusUnavailable",
    "Clock",
    "ConfigError",
    "DeviceMessage",
    "FleetstreamError",
    "InvalidInput",
    "InvalidReading",
    "ManualClock",
    "Overloaded",
    "Reading",
    "Settings",
    "StoreError",
    "SystemClock",
    "__version__",
    "load_settings",
]
