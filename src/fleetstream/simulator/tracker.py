"""Trackers: devices that move along plausible routes inside a region.

Each tracker has a speed (0 to 30 m/s, mean-reverting towards a cruising
speed of its own) and a heading that turns smoothly (a random walk of the
turn rate, bounded), like a vehicle following streets. Near the edge of the
region it steers back towards the centre, and its position never leaves the
region. Distances use the local flat-earth approximation, accurate to well
under a metre over one step.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from fleetstream.errors import ConfigError

METRES_PER_DEGREE = 111_320.0
MAX_SPEED_MS = 30.0
_MAX_TURN_DEG_S = 20.0  # a car turning a corner at walking pace; a vehicle at speed turns slower


@dataclass(frozen=True, slots=True)
class Region:
    """A bounding box in degrees (WGS 84)."""

    south: float = 52.30
    west: float = 4.75
    north: float = 52.42
    east: float = 5.00

    def __post_init__(self) -> None:
        if not (-90 <= self.south < self.north <= 90 and -180 <= self.west < self.east <= 180):
            msg = f"a region needs south < north in [-90, 90] and west < east in [-180, 180], got {self}"
            raise ConfigError(msg)

    @classmethod
    def parse(cls, text: str) -> Region:
        """``"south,west,north,east"`` in degrees, e.g. ``52.30,4.75,52.42,5.00``.

        Raises:
            ConfigError: not four numbers, or not a box.
        """
        parts = text.split(",")
        try:
            south, west, north, east = (float(p) for p in parts)
        except ValueError:
            msg = f"--region: expected south,west,north,east in degrees, got {text!r}"
            raise ConfigError(msg) from None
        return cls(south, west, north, east)

    def contains(self, lat: float, lon: float) -> bool:
        """Whether a point lies in the box (edges included)."""
        return self.south <= lat <= self.north and self.west <= lon <= self.east


class Motion:
    """Where one tracker is and how it moves.

    Example:
        >>> rng = random.Random(3)
        >>> m = Motion(Region(), rng)
        >>> for _ in range(600):
        ...     m.step(1.0, rng)
        >>> Region().contains(m.lat, m.lon) and 0 <= m.speed <= 30
        True
    """

    __slots__ = ("cruise", "heading", "lat", "lon", "region", "speed", "turn")

    def __init__(self, region: Region, rng: random.Random) -> None:
        self.region = region
        self.lat = rng.uniform(region.south, region.north)
        self.lon = rng.uniform(region.west, region.east)
        self.cruise = rng.uniform(5.0, 20.0)  # a cyclist to a car in town
        self.speed = self.cruise
        self.heading = rng.uniform(0.0, 360.0)  # degrees clockwise from north
        self.turn = 0.0  # degrees per second

    def step(self, dt_s: float, rng: random.Random) -> None:
        """Move on by ``dt_s`` seconds."""
        a = math.exp(-dt_s / 60.0)
        self.speed = (
            self.cruise + (self.speed - self.cruise) * a + 4.0 * math.sqrt(1 - a * a) * rng.gauss(0, 1)
        )
        self.speed = min(max(self.speed, 0.0), MAX_SPEED_MS)
        self.turn = 0.8 * self.turn + rng.gauss(0.0, 2.0)
        self.turn = min(max(self.turn, -_MAX_TURN_DEG_S), _MAX_TURN_DEG_S)
        r = self.region
        margin = 0.1
        near_edge = not (
            r.south + margin * (r.north - r.south) <= self.lat <= r.north - margin * (r.north - r.south)
            and r.west + margin * (r.east - r.west) <= self.lon <= r.east - margin * (r.east - r.west)
        )
        if near_edge:  # steer towards the centre, at the turn rate a vehicle can manage
            centre = self._bearing((r.south + r.north) / 2, (r.west + r.east) / 2)
            off = (centre - self.heading + 180.0) % 360.0 - 180.0
            self.turn = math.copysign(min(abs(off) / dt_s, _MAX_TURN_DEG_S), off)
        self.heading = (self.heading + self.turn * dt_s) % 360.0
        distance = self.speed * dt_s
        rad = math.radians(self.heading)
        lat = self.lat + distance * math.cos(rad) / METRES_PER_DEGREE
        lon = self.lon + distance * math.sin(rad) / (METRES_PER_DEGREE * math.cos(math.radians(self.lat)))
        # Clamping only shortens a step: the speed stays a bound on what the data shows.
        self.lat = min(max(lat, r.south), r.north)
        self.lon = min(max(lon, r.west), r.east)

    def _bearing(self, lat: float, lon: float) -> float:
        dy = lat - self.lat
        dx = (lon - self.lon) * math.cos(math.radians(self.lat))
        return math.degrees(math.atan2(dx, dy)) % 360.0
