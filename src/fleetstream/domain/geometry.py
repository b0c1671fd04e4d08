"""Geofence zones: rectangles and GeoJSON polygons, point-in-zone tests, and an index of many zones.

The geometry is planar in (longitude, latitude) degrees: an edge is the straight
line between its two corners on an equirectangular map, not a great circle. That
is what GeoJSON (RFC 7946 §3.1.1) and map drawing tools mean by a polygon, and
it makes each test a few exact float comparisons per edge.

Rules a caller relies on:

* **The boundary is inside.** A point on an edge or a corner of a zone, or on
  the edge of one of its holes, is contained (like ``shapely``'s ``covers``).
* **Longitude wraps.** A point's longitude is taken modulo 360, so 180 and -180
  are the same meridian. A rectangle with ``west > east`` spans the
  antimeridian (``west=170, east=-170`` is 20° wide); ``west=-180, east=180`` is
  the whole band. A polygon edge always takes the shorter way round: two
  consecutive corners more than 180° of longitude apart are joined across the
  antimeridian (exactly 180° apart: as written).
* **A pole is one point.** At latitude ±90 longitude means nothing, so a zone
  contains the pole when it reaches that latitude anywhere.
* A point with a NaN or infinite coordinate is in no zone.
* Polygons use the even-odd rule; the winding order of rings is not checked,
  nor are self-intersections. A ring that circles a pole is refused (its
  inside is ambiguous on this map): a polar cap is a rectangle up to ±90.

The shapes live beside this module: the map's coordinates and :class:`Rectangle`
in :mod:`~fleetstream.domain.geometry_rectangle`, :class:`Polygon` and
:class:`MultiPolygon` in :mod:`~fleetstream.domain.geometry_polygon`; this one
holds :class:`Zone` and :class:`ZoneIndex`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# Re-exported: rule code and tests import the shapes and their types from here.
from fleetstream.domain.geometry_polygon import MultiPolygon as MultiPolygon
from fleetstream.domain.geometry_polygon import Polygon as Polygon
from fleetstream.domain.geometry_rectangle import BoolArray as BoolArray
from fleetstream.domain.geometry_rectangle import Box as Box
from fleetstream.domain.geometry_rectangle import FloatArray as FloatArray
from fleetstream.domain.geometry_rectangle import Rectangle as Rectangle
from fleetstream.domain.geometry_rectangle import Ring as Ring
from fleetstream.domain.geometry_rectangle import _normal_lon

Shape = Rectangle | Polygon | MultiPolygon


@dataclass(frozen=True, slots=True)
class Zone:
    """A named area a rule can require a tracker to stay inside or outside of.

    Example:
        >>> dateline = Zone.rectangle("z1", "Dateline", south=-10, west=170, north=10, east=-170)
        >>> dateline.contains(0, 180), dateline.contains(0, -175), dateline.contains(0, 160)
        (True, True, False)
        >>> square = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10]]]}
        >>> Zone.from_geojson("z2", "Square", square).contains_many(np.array([5.0, 10.0, 11.0]), np.zeros(3))
        array([ True,  True, False])
        >>> Zone.rectangle("z3", "Bad", south=95, west=0, north=96, east=1)
        Traceback (most recent call last):
        ...
        ValueError: south-west corner: latitude 95 is outside [-90, 90]
    """

    id: str
    name: str
    shape: Shape

    @classmethod
    def rectangle(cls, id: str, name: str, south: float, west: float, north: float, east: float) -> Zone:
        """A zone between two parallels and two meridians; ``west > east`` spans the antimeridian."""
        return cls(id, name, Rectangle(south, west, north, east))

    @classmethod
    def from_geojson(cls, id: str, name: str, geometry: Mapping[str, Any]) -> Zone:
        """A zone from a GeoJSON ``Polygon`` or ``MultiPolygon`` geometry (positions are ``[lon, lat]``).

        Raises:
            ValueError: the geometry is not one of those, or a position or ring is invalid; the message
                says where (``coordinates[0][3]: latitude 95 is outside [-90, 90]``).
        """
        kind = geometry.get("type") if isinstance(geometry, Mapping) else None
        coordinates = geometry.get("coordinates") if isinstance(geometry, Mapping) else None
        if kind == "Polygon" and isinstance(coordinates, list | tuple):
            return cls(id, name, Polygon.from_geojson(coordinates))
        if kind == "MultiPolygon" and isinstance(coordinates, list | tuple) and coordinates:
            parts = (Polygon.from_geojson(c, f"coordinates[{i}]") for i, c in enumerate(coordinates))
            return cls(id, name, MultiPolygon(tuple(parts)))
        msg = f"expected a GeoJSON Polygon or MultiPolygon with coordinates, got type {kind!r}"
        raise ValueError(msg)

    def contains(self, lat: float, lon: float) -> bool:
        """Whether the point is in the zone, its boundary included."""
        return self.shape.contains(lat, lon)

    def contains_many(self, lats: npt.ArrayLike, lons: npt.ArrayLike) -> BoolArray:
        """:meth:`contains` for many points at once, as a boolean array."""
        return self.shape.contains_many(np.asarray(lats, np.float64), np.asarray(lons, np.float64))


class ZoneIndex:
    """Many zones, found by a grid of cells over their bounding boxes before the exact test.

    Example:
        >>> a, b = Zone.rectangle("a", "A", 0, 0, 10, 10), Zone.rectangle("b", "B", 5, 5, 20, 20)
        >>> index = ZoneIndex([a, b])
        >>> sorted(index.zones_at(7, 7)), sorted(index.zones_at(15, 15)), index.zones_at(-5, -5)
        (['a', 'b'], ['b'], set())
        >>> ZoneIndex.crossings({"a", "b"}, {"b", "c"})
        ({'c'}, {'a'})
    """

    _MAX_CELLS = 4096
    """A zone over more cells than this is checked for every point instead of filling the grid."""

    def __init__(self, zones: Iterable[Zone], *, cell_deg: float = 1.0) -> None:
        if not (cell_deg > 0 and (180.0 / cell_deg).is_integer()):
            msg = f"cell_deg must divide 180 evenly, got {cell_deg}"
            raise ValueError(msg)
        self._cell = cell_deg
        self._columns = round(360.0 / cell_deg)
        self._zones: dict[str, Zone] = {}
        self._grid: dict[tuple[int, int], list[str]] = {}
        self._everywhere: list[str] = []
        for zone in zones:
            if zone.id in self._zones:
                msg = f"zone id {zone.id!r} appears twice"
                raise ValueError(msg)
            self._zones[zone.id] = zone
            self._add(zone)

    def _add(self, zone: Zone) -> None:
        cells: set[tuple[int, int]] = set()
        for south, west, north, east in zone.shape.boxes():
            # One cell of margin each way: the prefilter may let a few more through, never fewer,
            # whatever the rounding of a point's cell number.
            size = self._cell
            rows = range(math.floor((south + 90.0) / size) - 1, math.floor((north + 90.0) / size) + 2)
            first, last = math.floor((west + 180.0) / size) - 1, math.floor((east + 180.0) / size) + 1
            columns = range(self._columns) if last - first + 1 >= self._columns else range(first, last + 1)
            if len(rows) * len(columns) > self._MAX_CELLS:
                self._everywhere.append(zone.id)
                return
            cells.update((row, column % self._columns) for row in rows for column in columns)
        for cell in cells:
            self._grid.setdefault(cell, []).append(zone.id)

    @property
    def zones(self) -> Mapping[str, Zone]:
        """The zones by id."""
        return self._zones

    def zones_at(self, lat: float, lon: float) -> set[str]:
        """Ids of the zones containing the point (boundary included); empty for NaN or infinite ones."""
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return set()
        if -90.0 < lat < 90.0:
            row = math.floor((lat + 90.0) / self._cell)
            column = math.floor((_normal_lon(lon) + 180.0) / self._cell) % self._columns
            candidates: Iterable[str] = [*self._grid.get((row, column), ()), *self._everywhere]
        else:
            candidates = self._zones  # a pole has every longitude: the grid cannot narrow it down
        return {zid for zid in candidates if self._zones[zid].contains(lat, lon)}

    @staticmethod
    def crossings(previous: Set[str], current: Set[str]) -> tuple[set[str], set[str]]:
        """``(entered, left)``: zones in ``current`` only, zones in ``previous`` only."""
        return set(current) - set(previous), set(previous) - set(current)
