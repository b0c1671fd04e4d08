"""Coordinates of the geofence map and the rectangle zone shape.

The frames a shape's bounding boxes and rings are written in (:data:`Box`,
:data:`Ring`), normalising longitudes into [-180, 180), checking the numbers a
user sent, and :class:`Rectangle`, the shape between two parallels and two
meridians. The rules of the map (boundary inside, longitude wrapping, poles)
are described in :mod:`fleetstream.domain.geometry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Box = tuple[float, float, float, float]
"""``(south, west, north, east)`` with ``-180 <= west < 180`` and ``west <= east <= west + 360``."""
Ring = tuple[tuple[float, float], ...]
"""Closed ring of ``(lon, lat)`` corners, unwrapped: consecutive longitudes at most 180° apart."""
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _normal_lon(lon: float) -> float:
    """The longitude in [-180, 180); values already there are returned unchanged (no rounding)."""
    return lon if -180.0 <= lon < 180.0 else (lon + 180.0) % 360.0 - 180.0


def _normal_lons(lons: FloatArray) -> FloatArray:
    outside = ~((lons >= -180.0) & (lons < 180.0))
    if not outside.any():
        return lons
    out = lons.copy()
    with np.errstate(invalid="ignore"):  # infinity becomes NaN, as in the scalar path, quietly
        out[outside] = (out[outside] + 180.0) % 360.0 - 180.0
    return out


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{where}: expected a number, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _show(value: float) -> str:
    """A number as a user wrote it in JSON: ``181``, not ``181.0``."""
    return str(int(value)) if value.is_integer() else repr(value)


def _check_lat_lon(lat: float, lon: float, where: str) -> None:
    if math.isnan(lat) or math.isnan(lon):
        msg = f"{where}: coordinates must be numbers, not NaN"
        raise ValueError(msg)
    if not -90.0 <= lat <= 90.0:
        msg = f"{where}: latitude {_show(lat)} is outside [-90, 90]"
        raise ValueError(msg)
    if not -180.0 <= lon <= 180.0:
        msg = f"{where}: longitude {_show(lon)} is outside [-180, 180]"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Rectangle:
    """The cells between two parallels and two meridians; ``west > east`` crosses the antimeridian."""

    south: float
    west: float
    north: float
    east: float

    def __post_init__(self) -> None:
        for name in ("south", "west", "north", "east"):
            object.__setattr__(self, name, _number(getattr(self, name), name))
        _check_lat_lon(self.south, self.west, "south-west corner")
        _check_lat_lon(self.north, self.east, "north-east corner")
        if self.south >= self.north:
            msg = f"south ({_show(self.south)}) must be below north ({_show(self.north)})"
            raise ValueError(msg)
        if _normal_lon(self.west) == _normal_lon(self.east) and not (self.west == -180 and self.east == 180):
            msg = f"west and east ({_show(self.west)}, {_show(self.east)}) must be different meridians"
            raise ValueError(msg)

    def boxes(self) -> list[Box]:
        """The bounding box, in the unwrapped frame described by :data:`Box`."""
        west = _normal_lon(self.west)
        width = self.east - self.west
        width = width + 360.0 if width <= 0 else width
        return [(self.south, west, self.north, west + width)]

    def contains(self, lat: float, lon: float) -> bool:
        """Whether the point is inside or on the edge."""
        if not math.isfinite(lon):
            return False
        if lat == 90.0 or lat == -90.0:
            return lat in (self.north, self.south)
        south, west, north, east = self.boxes()[0]
        q = _normal_lon(lon)
        return south <= lat <= north and (west <= q <= east or west <= q + 360.0 <= east)

    def contains_many(self, lats: FloatArray, lons: FloatArray) -> BoolArray:
        """:meth:`contains` for arrays of points."""
        south, west, north, east = self.boxes()[0]
        q = _normal_lons(lons)
        result = (lats >= south) & (lats <= north) & (((q >= west) & (q <= east)) | (q + 360.0 <= east))
        for pole in (90.0, -90.0):
            if pole in (self.north, self.south):
                result |= (lats == pole) & np.isfinite(lons)
        return result
