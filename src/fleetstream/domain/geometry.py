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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

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


def _ring_position(ring: Ring, x: float, y: float) -> int:
    """1 inside, 0 on the boundary, -1 outside (even-odd rule, crossings counted to the east)."""
    inside = False
    ax, ay = ring[0]
    for bx, by in ring[1:]:
        # Signed area of (a, b, p): zero on the edge's line; its sign against the edge's
        # direction says whether the edge crosses the point's parallel east of the point.
        cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax)
        if cross == 0.0 and min(ax, bx) <= x <= max(ax, bx) and min(ay, by) <= y <= max(ay, by):
            return 0
        if (ay > y) != (by > y) and (cross > 0.0) == (by > ay):
            inside = not inside
        ax, ay = bx, by
    return 1 if inside else -1


def _ring_position_many(ring: Ring, x: FloatArray, y: FloatArray) -> tuple[BoolArray, BoolArray]:
    """(strictly inside, on the boundary) for many points: the same arithmetic as :func:`_ring_position`."""
    inside = np.zeros(x.shape, np.bool_)
    boundary = np.zeros(x.shape, np.bool_)
    ax, ay = ring[0]
    for bx, by in ring[1:]:
        cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax)
        on_line = cross == 0.0
        if on_line.any():
            boundary |= (
                on_line & (x >= min(ax, bx)) & (x <= max(ax, bx)) & (y >= min(ay, by)) & (y <= max(ay, by))
            )
        inside ^= ((y < ay) != (y < by)) & ((cross > 0.0) == (by > ay))
        ax, ay = bx, by
    return inside & ~boundary, boundary


def _unwrap(raw: Sequence[Any], where: str) -> tuple[list[tuple[float, float]], list[int]]:
    """Closed ring corners as ``(lon, lat)`` plus, per corner, the turns of 360° that unwrap it."""
    if not isinstance(raw, list | tuple):
        msg = f"{where}: expected a list of [lon, lat] positions"
        raise ValueError(msg)
    points: list[tuple[float, float]] = []
    for i, position in enumerate(raw):
        if not isinstance(position, list | tuple) or len(position) < 2:
            msg = f"{where}[{i}]: expected a position [lon, lat], got {position!r}"
            raise ValueError(msg)
        lon, lat = _number(position[0], f"{where}[{i}]"), _number(position[1], f"{where}[{i}]")
        _check_lat_lon(lat, lon, f"{where}[{i}]")
        points.append((lon, lat))
    if points and points[0] != points[-1]:
        points.append(points[0])
    turns = [0]
    for (lon0, _), (lon1, _) in itertools.pairwise(points):
        step = lon1 - lon0
        if abs(step) == 360.0:
            edge = f"an edge from longitude {_show(lon0)} to {_show(lon1)}"
            msg = f"{where}: {edge} has no length; a band round a pole is a rectangle"
            raise ValueError(msg)
        turns.append(turns[-1] + (-1 if step > 180.0 else 1 if step < -180.0 else 0))
    if turns[-1] != 0:
        msg = f"{where}: the ring circles a pole; describe a polar cap as a rectangle up to latitude ±90"
        raise ValueError(msg)
    return points, turns


def _place(points: list[tuple[float, float]], turns: list[int], where: str, *, near: float | None) -> Ring:
    """The unwrapped ring, moved whole turns: west edge in [-180, 180), or middle nearest ``near``."""
    lons = [lon + 360.0 * k for (lon, _), k in zip(points, turns, strict=True)]
    west, east = min(lons), max(lons)
    shift = -math.floor((west + 180.0) / 360.0) if near is None else round((near - (west + east) / 2) / 360.0)
    # lon + 360 * turns in one step, so a corner lands exactly where a point's ``lon + 360`` does.
    ring = tuple((lon + 360.0 * (k + shift), lat) for (lon, lat), k in zip(points, turns, strict=True))
    if len(set(ring)) < 3:
        msg = f"{where}: a ring needs at least 3 distinct positions"
        raise ValueError(msg)
    if east - west > 360.0:
        msg = f"{where}: the ring spans more than 360° of longitude"
        raise ValueError(msg)
    (ax, ay), (bx, by) = ring[0], next(p for p in ring if p != ring[0])
    if all((bx - ax) * (y - ay) == (by - ay) * (x - ax) for x, y in ring):
        msg = f"{where}: the ring encloses no area (its positions are on one line)"
        raise ValueError(msg)
    return ring


@dataclass(frozen=True, slots=True)
class Polygon:
    """An outer ring with holes, each an unwrapped closed :data:`Ring`; made by :meth:`from_geojson`."""

    exterior: Ring
    holes: tuple[Ring, ...] = ()
    _box: Box = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lons = [lon for lon, _ in self.exterior]
        lats = [lat for _, lat in self.exterior]
        object.__setattr__(self, "_box", (min(lats), min(lons), max(lats), max(lons)))

    @classmethod
    def from_geojson(cls, coordinates: Sequence[Any], where: str = "coordinates") -> Polygon:
        """From GeoJSON Polygon ``coordinates``: rings of ``[lon, lat]``, the first one the outside."""
        if not isinstance(coordinates, list | tuple) or not coordinates:
            msg = f"{where}: a polygon needs at least its outer ring"
            raise ValueError(msg)
        points, turns = _unwrap(coordinates[0], f"{where}[0]")
        exterior = _place(points, turns, f"{where}[0]", near=None)
        middle = (min(x for x, _ in exterior) + max(x for x, _ in exterior)) / 2
        holes = []
        for i, raw in enumerate(coordinates[1:], start=1):
            points, turns = _unwrap(raw, f"{where}[{i}]")
            holes.append(_place(points, turns, f"{where}[{i}]", near=middle))
        return cls(exterior, tuple(holes))

    def boxes(self) -> list[Box]:
        """The bounding box of the outer ring, in the unwrapped frame described by :data:`Box`."""
        return [self._box]

    def _covers(self, x: float, y: float) -> bool:
        if _ring_position(self.exterior, x, y) < 0:
            return False
        return all(_ring_position(hole, x, y) <= 0 for hole in self.holes)

    def contains(self, lat: float, lon: float) -> bool:
        """Whether the point is inside, on an edge or a corner (also of a hole)."""
        if not math.isfinite(lon):
            return False
        south, west, north, east = self._box
        if lat == 90.0 or lat == -90.0:
            return lat in (south, north)
        if not south <= lat <= north:
            return False
        q = _normal_lon(lon)
        return any(west <= x <= east and self._covers(x, lat) for x in (q, q + 360.0))

    def contains_many(self, lats: FloatArray, lons: FloatArray) -> BoolArray:
        """:meth:`contains` for arrays of points: a bounding-box filter, then ray casting on the rest."""
        south, west, north, east = self._box
        q = _normal_lons(lons)
        near = (lats >= south) & (lats <= north)
        result = np.zeros(lats.shape, np.bool_)
        for x in (q, q + 360.0) if east >= 180.0 else (q,):
            idx = np.flatnonzero(near & (x >= west) & (x <= east))
            if idx.size == 0:
                continue
            px, py = x[idx], lats[idx]
            inside, boundary = _ring_position_many(self.exterior, px, py)
            covered = inside | boundary
            for hole in self.holes:
                covered &= ~_ring_position_many(hole, px, py)[0]
            result[idx] |= covered
        for pole in (90.0, -90.0):
            if pole in (south, north):
                result |= (lats == pole) & np.isfinite(lons)
        return result


@dataclass(frozen=True, slots=True)
class MultiPolygon:
    """Several polygons; a point is contained when one of them contains it."""

    polygons: tuple[Polygon, ...]

    def boxes(self) -> list[Box]:
        """One bounding box per polygon (parts may lie on either side of the antimeridian)."""
        return [p._box for p in self.polygons]

    def contains(self, lat: float, lon: float) -> bool:
        """Whether one of the polygons contains the point."""
        return any(p.contains(lat, lon) for p in self.polygons)

    def contains_many(self, lats: FloatArray, lons: FloatArray) -> BoolArray:
        """:meth:`contains` for arrays of points."""
        result = np.zeros(lats.shape, np.bool_)
        for p in self.polygons:
            result |= p.contains_many(lats, lons)
        return result


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
