"""The range check: a reading outside its device type's valid range is refused or flagged.

Checked once per decoded batch, on its columns, for both decode paths: a type
without ranges (``Sensor``) costs one dictionary miss per distinct
(type, sensor) pair, not per reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage
from fleetstream.ingest.devicetypes import RANGES, Range, range_of

OutOfRange = Literal["reject", "flag"]
BoundsOf = Callable[[str, str], Range | None]  # (device type, sensor) → valid range
_RANGED_TYPES = frozenset(device_type for device_type, _ in RANGES)


def _g(x: float) -> str:
    return f"{x:g}"


def out_of_range_error(message: DeviceMessage, bounds_of: BoundsOf = range_of) -> str | None:
    """The error for the first reading of a message outside its range, or ``None``.

    >>> from fleetstream.domain.records import Reading
    >>> r = Reading("d", 0, "temperature", 900.0, "°C", "Thermostat")
    >>> out_of_range_error(DeviceMessage("d", 0, "telemetry", "Thermostat", [r]))
    'temperature: 900 is outside the Thermostat range -50..100 °C'
    """
    for reading in message.readings:
        bounds = bounds_of(reading.device_type, reading.sensor)
        if bounds is not None and not bounds[0] <= reading.value <= bounds[1]:
            unit = f" {reading.unit}" if reading.unit else ""
            return (
                f"{reading.sensor}: {_g(reading.value)} is outside the {reading.device_type} range "
                f"{_g(bounds[0])}..{_g(bounds[1])}{unit}"
            )
    return None


def count_out_of_range(batch: Batch) -> int:
    """How many readings of a batch lie outside their type's range.

    The common batches (one type without ranges; one type and one sensor) are settled with
    set, ``min`` and ``max`` over whole columns, in C; mixed batches take a loop.
    """
    types = set(batch.device_type)
    if types.isdisjoint(_RANGED_TYPES):
        return 0
    values = batch.value
    sensors = set(batch.sensor)
    if len(types) == 1 and len(sensors) == 1:
        bounds = range_of(next(iter(types)), next(iter(sensors)))
        if bounds is None:
            return 0
        low, high = bounds
        if low <= min(values) and max(values) <= high:
            return 0
        return sum(1 for v in values if not low <= v <= high)
    pairs: dict[tuple[str, str], Range | None] = {}
    count = 0
    for device_type, sensor, value in zip(batch.device_type, batch.sensor, values, strict=True):
        key = (device_type, sensor)
        try:
            found = pairs[key]
        except KeyError:
            found = pairs[key] = range_of(device_type, sensor)
        if found is not None and not found[0] <= value <= found[1]:
            count += 1
    return count


def count_message(message: DeviceMessage, bounds_of: BoundsOf = range_of) -> int:
    """How many readings of one message lie outside their type's range."""
    count = 0
    for reading in message.readings:
        bounds = bounds_of(reading.device_type, reading.sensor)
        if bounds is not None and not bounds[0] <= reading.value <= bounds[1]:
            count += 1
    return count
