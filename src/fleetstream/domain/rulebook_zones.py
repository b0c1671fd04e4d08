"""Zone membership of a rule book's trackers: positions from readings, crossings, zone rules fed.

:class:`ZoneTracker` holds the steps of :class:`~fleetstream.domain.rulebook.RuleBook` that turn
``latitude`` and ``longitude`` readings of one event time into positions, test them against every
zone, report each :class:`ZoneCrossing`, and hand zone rules the membership they test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fleetstream.domain.geometry import Zone
from fleetstream.domain.rule_engines import FlagEngine, RangeEngine, Rows, rounds
from fleetstream.domain.rule_flags import ZoneEngine
from fleetstream.domain.rules import RuleTransition

LATITUDE, LONGITUDE = "latitude", "longitude"
Engine = RangeEngine | FlagEngine


@dataclass(frozen=True, slots=True)
class ZoneCrossing:
    """A tracker entering or leaving a zone, at the event time of the position that shows it."""

    device_id: str
    zone_id: str
    entered: bool
    ts: int
    lat: float
    lon: float


@dataclass(slots=True)
class RuleOutput:
    """What a call to the book produced, in the order it happened per (device, rule)."""

    transitions: list[RuleTransition] = field(default_factory=list)
    crossings: list[ZoneCrossing] = field(default_factory=list)


class ZoneTracker:
    """The position and zone steps of :class:`~fleetstream.domain.rulebook.RuleBook`, whose
    ``__init__`` sets up the state declared here."""

    _engines: dict[str, Engine]
    _zones: dict[str, Zone]
    _inside: npt.NDArray[np.bool_]
    _slot: npt.NDArray[np.int64]
    _located: list[int]
    _zone_ids: list[str]
    _halves: dict[int, tuple[int, float | None, float | None]]

    def _positions(self, rows: Rows, out: RuleOutput) -> None:
        finite = np.isfinite(rows.values)  # a NaN coordinate is no position, not one outside every zone
        lat_rows, lon_rows = rows.sensor(LATITUDE) & finite, rows.sensor(LONGITUDE) & finite
        found: list[tuple[int, int, int, float, float]] = []  # (row, device, ts, lat, lon)
        halves = self._halves
        for i in np.flatnonzero(lat_rows | lon_rows).tolist():
            di, t, v = int(rows.dev[i]), int(rows.ts[i]), float(rows.values[i])
            half = halves.get(di)
            lat, lon = (v, None) if lat_rows[i] else (None, v)
            if half is not None and half[0] == t:
                lat = half[1] if lat is None else lat
                lon = half[2] if lon is None else lon
            if lat is not None and lon is not None:
                halves.pop(di, None)
                found.append((i, di, t, lat, lon))
            else:
                halves[di] = (t, lat, lon)
        if not found:
            return
        row = np.array([f[0] for f in found], np.intp)
        pdev = rows.dev[row]
        pts = np.array([f[2] for f in found], np.int64)
        lats = [f[3] for f in found]
        lons = [f[4] for f in found]
        lat_array, lon_array = np.array(lats, np.float64), np.array(lons, np.float64)
        member = np.empty((len(found), len(self._zone_ids)), np.bool_)
        for j, zid in enumerate(self._zone_ids):
            member[:, j] = self._zones[zid].contains_many(lat_array, lon_array)
        at = Rows(
            pdev,
            [rows.ids[i] for i in row.tolist()],
            rows.types[row],
            rows.sensors[row],
            rows.values[row],
            pts,
        )
        zone_rules = [e for e in self._engines.values() if isinstance(e, ZoneEngine)]
        scopes = [at.scope(e.rule) for e in zone_rules]
        column = {zid: j for j, zid in enumerate(self._zone_ids)}
        crossed: list[tuple[int, int, ZoneCrossing]] = []
        for r in rounds(pdev):
            d, cur = pdev[r], member[r]
            place = self._place(d)
            for i, j in zip(*np.nonzero(self._inside[place] != cur), strict=True):
                p = int(r[i])
                z = ZoneCrossing(at.ids[p], self._zone_ids[j], bool(cur[i, j]), int(pts[p]), lats[p], lons[p])
                crossed.append((p, int(j), z))
            self._inside[place] = cur
            for e, scope in zip(zone_rules, scopes, strict=True):
                col = column.get(e.rule.zone_id)
                inside = None if col is None else cur[:, col]
                e.on_positions(d, pts[r], inside, None if scope is None else scope[r], out.transitions)
        out.crossings += [z for _, _, z in sorted(crossed, key=lambda c: c[:2])]  # log order, then zone id

    def _place(self, devices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Rows of ``_inside`` for devices (distinct), given to those located for the first time."""
        place = self._slot[devices]
        for d in devices[place < 0].tolist():
            self._slot[d] = len(self._located)
            self._located.append(d)
        if len(self._located) > len(self._inside):
            grown = np.zeros((max(256, 2 * len(self._located)), len(self._zone_ids)), np.bool_)
            grown[: len(self._inside)] = self._inside
            self._inside = grown
        return self._slot[devices]
