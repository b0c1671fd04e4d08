"""The rules and zones of a fleet, evaluated over batches of readings: alert transitions and zone crossings.

A :class:`RuleBook` holds rules of every kind (:mod:`fleetstream.domain.rule_kinds`) and the
zones. :meth:`RuleBook.on_batch` takes rows in log order (event time in µs) and returns the
alerts that open, escalate or clear, and a :class:`ZoneCrossing` for every zone a tracker
enters or leaves (whether or not a rule names the zone). :meth:`RuleBook.on_time` takes the
watermark and fires deadlines (durations, escalations, auto-clears, offline devices), each
stamped at its own event time. A device's position is its ``latitude`` and ``longitude``
readings of the same event time (a tracker sends both in one message).

Example:
    >>> book = RuleBook([parse_rule({"id": "hot", "when": {"sensor": "t", "op": ">", "threshold": 80}}),
    ...                  parse_rule({"kind": "zone", "id": "home", "zone_id": "depot"})],
    ...                 [parse_zone({"id": "depot",
    ...                              "rectangle": {"south": 0, "west": 0, "north": 1, "east": 1}})])
    >>> out = book.on_batch(["a", "b", "b"], ["Oven", "Tracker", "Tracker"], ["t", "latitude", "longitude"],
    ...                     [81.0, 2.0, 0.5], [10, 10, 10])
    >>> [(t.kind, t.rule_id, t.device_id, t.message) for t in out.transitions]
    [('open', 'hot', 'a', 't > 80 (value 81)'), ('open', 'home', 'b', 'left zone depot')]
    >>> out.crossings
    []

Positions and zone crossings are worked out in :mod:`~fleetstream.domain.rulebook_zones`, by
:class:`~fleetstream.domain.rulebook_zones.ZoneTracker`, a base of :class:`RuleBook`; this module
holds the book's definitions, its stream steps and its state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fleetstream.domain.geometry import Zone
from fleetstream.domain.rule_engines import FlagEngine, RangeEngine, Rows
from fleetstream.domain.rule_flags import AnomalyEngine, OfflineEngine, RateEngine, ZoneEngine
from fleetstream.domain.rule_kinds import (
    AnomalyRule,
    OfflineRule,
    RateRule,
    Rule,
    ZoneRule,
    parse_rule,
    parse_zone,
)

# Re-exported: the engine, the cluster workers and the tests import them from here.
from fleetstream.domain.rulebook_zones import LATITUDE as LATITUDE
from fleetstream.domain.rulebook_zones import LONGITUDE as LONGITUDE
from fleetstream.domain.rulebook_zones import Engine as Engine
from fleetstream.domain.rulebook_zones import RuleOutput as RuleOutput
from fleetstream.domain.rulebook_zones import ZoneCrossing as ZoneCrossing
from fleetstream.domain.rulebook_zones import ZoneTracker
from fleetstream.domain.rules import RangeRule

__all__ = ["Rule", "RuleBook", "RuleOutput", "ZoneCrossing", "parse_rule", "parse_zone"]

SNAPSHOT_FORMAT = 1


def _engine(rule: Rule) -> Engine:
    if isinstance(rule, RangeRule):
        return RangeEngine(rule)
    if isinstance(rule, ZoneRule):
        return ZoneEngine(rule)
    if isinstance(rule, OfflineRule):
        return OfflineEngine(rule)
    if isinstance(rule, RateRule):
        return RateEngine(rule)
    if isinstance(rule, AnomalyRule):
        return AnomalyEngine(rule)
    msg = f"not a rule: {rule!r}"
    raise TypeError(msg)


class RuleBook(ZoneTracker):
    """Every rule and zone of one partition of the fleet, with their per-device state."""

    def __init__(self, rules: Iterable[Rule] = (), zones: Iterable[Zone] = ()) -> None:
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._cap = 0
        self._engines: dict[str, Engine] = {}
        self._zones: dict[str, Zone] = {}
        # Zone membership of located devices only (trackers): slot x zone, columns in _zone_ids order.
        self._inside = np.zeros((0, 0), np.bool_)
        self._slot = np.zeros(0, np.int64)  # device -> row of _inside, -1 before its first position
        self._located: list[int] = []  # row of _inside -> device
        self._zone_ids: list[str] = []
        self._halves: dict[int, tuple[int, float | None, float | None]] = {}
        self.update(rules, zones, 0)

    # -- definitions --------------------------------------------------------------------------------

    @property
    def rules(self) -> dict[str, Rule]:
        """The rules by id."""
        return {rid: e.rule for rid, e in self._engines.items()}

    @property
    def zones(self) -> dict[str, Zone]:
        """The zones by id."""
        return dict(self._zones)

    def update(self, rules: Iterable[Rule], zones: Iterable[Zone], now_us: int) -> RuleOutput:
        """Replace the rules and zones; unchanged rules keep their state.

        A rule removed, redefined, or naming a zone that changed starts afresh, and each of its
        open alerts gets a ``clear`` transition at ``now_us``.

        Raises:
            ValueError: Two rules or two zones share an id.
        """
        new_rules = _by_id(rules, "rule")
        new_zones = _by_id(zones, "zone")
        moved = {z for z in self._zones.keys() | new_zones.keys() if self._zones.get(z) != new_zones.get(z)}
        out = RuleOutput()
        engines: dict[str, Engine] = {}
        for rid, rule in new_rules.items():
            old = self._engines.get(rid)
            if (
                old is not None
                and old.rule == rule
                and not (isinstance(rule, ZoneRule) and rule.zone_id in moved)
            ):
                engines[rid] = old
            else:
                engines[rid] = self._fresh(rule)
        for rid, old in self._engines.items():
            if engines.get(rid) is not old:
                if rid not in new_rules:
                    why = f"rule {rid} removed"
                elif new_rules[rid] == old.rule and isinstance(old.rule, ZoneRule):
                    why = f"zone {old.rule.zone_id} changed"
                else:
                    why = f"rule {rid} redefined"
                out.transitions += old.close(now_us, f"cleared: {why}")
        self._engines = engines
        if moved:
            ids = sorted(new_zones)
            inside = np.zeros((len(self._inside), len(ids)), np.bool_)
            for j, zid in enumerate(ids):
                if zid in self._zones and zid not in moved:
                    inside[:, j] = self._inside[:, self._zone_ids.index(zid)]
            self._zones, self._zone_ids, self._inside = new_zones, ids, inside
        return out

    def _fresh(self, rule: Rule) -> Engine:
        engine = _engine(rule)
        if isinstance(engine, FlagEngine):
            engine.names = self._names
        engine.grow(self._cap)
        return engine

    def _intern(self, name: str) -> int:
        d = self._ids.get(name)
        if d is None:
            d = self._ids[name] = len(self._names)
            self._names.append(name)
            if d >= self._cap:
                self._cap = max(1024, 2 * self._cap)
                for e in self._engines.values():
                    e.grow(self._cap)
                slot = np.full(self._cap, -1, np.int64)
                slot[: len(self._slot)] = self._slot
                self._slot = slot
        return d

    # -- stream -------------------------------------------------------------------------------------

    def on_batch(
        self,
        device_ids: Sequence[str],
        device_types: Sequence[str],
        sensors: Sequence[str],
        values: npt.ArrayLike,
        ts: npt.ArrayLike,
    ) -> RuleOutput:
        """Apply rows in log order (``ts``: event time, µs); returns their transitions and crossings."""
        out = RuleOutput()
        if not len(device_ids):
            return out
        get = self._ids.get
        dev = np.array([get(x, -1) for x in device_ids], np.int64)
        for i in np.flatnonzero(dev < 0).tolist():
            dev[i] = self._intern(device_ids[i])
        rows = Rows(
            dev,
            device_ids,
            np.asarray(device_types, dtype=object),
            np.asarray(sensors, dtype=object),
            np.asarray(values, dtype=np.float64),
            np.asarray(ts, dtype=np.int64),
        )
        for engine in self._engines.values():
            engine.on_rows(rows, out.transitions)
        if self._zones:
            self._positions(rows, out)
        return out

    def on_time(self, now_us: int) -> RuleOutput:
        """Fire every deadline at or before the watermark ``now_us`` (event time, µs)."""
        out = RuleOutput()
        for engine in self._engines.values():
            engine.on_time(now_us, out.transitions)
        # In event-time order (stable: one alert's transitions keep theirs), not in timer-heap order.
        rank = {rid: i for i, rid in enumerate(self._engines)}
        out.transitions.sort(key=lambda t: (t.ts, rank[t.rule_id], t.device_id))
        return out

    # -- state --------------------------------------------------------------------------------------

    def active(self) -> dict[tuple[str, str], str]:
        """Open alerts: (device, rule id) to current severity."""
        out: dict[tuple[str, str], str] = {}
        for engine in self._engines.values():
            out.update(engine.active())
        return out

    def snapshot(self) -> dict[str, Any]:
        """Builtins-only state (JSON-ready), for :meth:`restore`."""
        inside = {self._names[self._located[k]]: [self._zone_ids[j] for j in np.flatnonzero(row).tolist()]
                  for k, row in enumerate(self._inside[: len(self._located)]) if row.any()}  # fmt: skip
        return {
            "format": SNAPSHOT_FORMAT,
            "rules": {
                rid: {"rule": e.rule.to_dict(), "state": e.snapshot()} for rid, e in self._engines.items()
            },
            "inside": inside,
            "halves": {self._names[d]: list(h) for d, h in self._halves.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace the state with a :meth:`snapshot`; state of rules since redefined or removed is dropped.

        Raises:
            ValueError: Unknown snapshot format.
        """
        if state.get("format") != SNAPSHOT_FORMAT:
            msg = f"rule book snapshot: unknown format {state.get('format')!r}"
            raise ValueError(msg)
        self._engines = {rid: self._fresh(e.rule) for rid, e in self._engines.items()}
        for rid, saved in state["rules"].items():
            engine = self._engines.get(rid)
            if engine is not None and engine.rule.to_dict() == saved["rule"]:
                engine.restore(saved["state"], self._intern)
        self._slot[:] = -1
        self._located = []
        self._inside = np.zeros((0, len(self._zone_ids)), np.bool_)
        column = {zid: j for j, zid in enumerate(self._zone_ids)}
        for name, zids in state["inside"].items():
            row = int(self._place(np.array([self._intern(name)], np.int64))[0])
            for zid in zids:
                if zid in column:
                    self._inside[row, column[zid]] = True
        self._halves = {
            self._intern(name): (int(t), lat, lon) for name, (t, lat, lon) in state["halves"].items()
        }


def _by_id(items: Iterable[Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if item.id in out:
            msg = f"{what} id {item.id!r} appears twice"
            raise ValueError(msg)
        out[item.id] = item
    return out
