"""Polygon zone shapes: GeoJSON rings read and unwrapped, and the even-odd point tests on them.

:class:`Polygon` (an outer ring with holes) and :class:`MultiPolygon`, with the
ring arithmetic they share, for one point and for arrays of points. The rules
of the map (boundary inside, longitude wrapping, poles) are described in
:mod:`fleetstream.domain.geometry`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetstream.domain.geometry_rectangle import (
    BoolArray,
    Box,
    FloatArray,
    Ring,
    _check_lat_lon,
    _normal_lon,
    _normal_lons,
    _number,
    _show,
)


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
