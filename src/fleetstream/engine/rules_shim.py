"""A stand-in for ``fleetstream.domain.rulebook`` (range rules and zone crossings only).

Temporary: the engine is written against the rule book's interface; this module
gives it one until the full rule book (zones rules, offline, rate, anomaly) lands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetstream.domain.geometry import Zone, ZoneIndex
from fleetstream.domain.rules import RangeRule, RuleEvaluator, RuleTransition


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed rule and the definition it came from."""

    range: RangeRule
    definition: Mapping[str, Any]

    @property
    def id(self) -> str:
        return self.range.id

    @property
    def name(self) -> str:
        return self.range.name

    @property
    def severity(self) -> str:
        return self.range.severity

    @property
    def webhook(self) -> str | None:
        hook = self.definition.get("webhook")
        return None if hook is None else str(hook)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.definition)


def parse_rule(d: Mapping[str, Any]) -> Rule:
    """A rule of kind ``range`` (the default)."""
    if not isinstance(d, Mapping):
        msg = "rule: expected a JSON object"
        raise ValueError(msg)
    kind = d.get("kind", "range")
    if kind != "range":
        msg = f"rule: unknown kind {kind!r}"
        raise ValueError(msg)
    try:
        return Rule(RangeRule.from_dict(d), dict(d))
    except (TypeError, AttributeError) as exc:
        msg = f"rule: {exc}"
        raise ValueError(msg) from None


def parse_zone(d: Mapping[str, Any]) -> Zone:
    """A zone: ``{"id", "name", "rectangle": {south, west, north, east}}`` or with a GeoJSON ``geometry``."""
    if not isinstance(d, Mapping) or "id" not in d:
        msg = "zone: missing field 'id'"
        raise ValueError(msg)
    zid, name = str(d["id"]), str(d.get("name", d["id"]))
    if "rectangle" in d:
        r = d["rectangle"]
        try:
            return Zone.rectangle(zid, name, r["south"], r["west"], r["north"], r["east"])
        except (KeyError, TypeError) as exc:
            msg = f"zone {zid!r}: rectangle needs south, west, north, east ({exc})"
            raise ValueError(msg) from None
    if "geometry" in d:
        return Zone.from_geojson(zid, name, d["geometry"])
    msg = f"zone {zid!r}: give a 'rectangle' or a GeoJSON 'geometry'"
    raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class ZoneCrossing:
    """A tracker entering or leaving a zone."""

    device_id: str
    zone_id: str
    entered: bool
    ts: int
    lat: float
    lon: float


@dataclass(slots=True)
class RuleOutput:
    """What the rules emitted."""

    transitions: list[RuleTransition] = field(default_factory=list)
    crossings: list[ZoneCrossing] = field(default_factory=list)


class RuleBook:
    """Range rules and zone crossings of one partition."""

    def __init__(self, rules: Iterable[Rule] = (), zones: Iterable[Zone] = ()) -> None:
        self.rules = {r.id: r for r in rules}
        self.evaluator = RuleEvaluator(r.range for r in self.rules.values())
        self.index = ZoneIndex(zones)
        self._inside: dict[str, set[str]] = {}
        self._fix: dict[str, tuple[int, float | None, float | None]] = {}

    def update(self, rules: Iterable[Rule], zones: Iterable[Zone], now_us: int) -> RuleOutput:
        """Swap the rules and zones; open alerts of removed or changed rules clear at ``now_us``."""
        out = RuleOutput()
        new = {r.id: r for r in rules}
        for (device, rid), severity in self.evaluator.active().items():
            if rid not in new or new[rid].definition != self.rules[rid].definition:
                out.transitions.append(RuleTransition("clear", rid, device, severity, 0.0, 0.0, now_us))
        state = self.evaluator.snapshot()
        self.rules = new
        self.evaluator = RuleEvaluator(r.range for r in new.values())
        self.evaluator.restore(state)
        for t in out.transitions:  # forget the cleared ones
            self.evaluator._tracks.pop((t.device_id, t.rule_id), None)
        self.index = ZoneIndex(zones)
        return out

    def on_batch(
        self,
        device_ids: Sequence[str],
        device_types: Sequence[str],
        sensors: Sequence[str],
        values: Sequence[float],
        ts: Sequence[int],
    ) -> RuleOutput:
        """Rows of a batch, in log order."""
        out = RuleOutput()
        zoned = bool(self.index.zones)
        for i, device in enumerate(device_ids):
            sensor = sensors[i]
            if self.rules:
                out.transitions += self.evaluator.on_reading(
                    device, device_types[i], sensor, values[i], ts[i]
                )
            if zoned and sensor in ("latitude", "longitude"):
                self._position(out, device, sensor, values[i], ts[i])
        return out

    def _position(self, out: RuleOutput, device: str, sensor: str, value: float, t: int) -> None:
        at, lat, lon = self._fix.get(device, (t, None, None))
        if at != t:
            lat = lon = None
        if sensor == "latitude":
            lat = value
        else:
            lon = value
        self._fix[device] = (t, lat, lon)
        if lat is None or lon is None:
            return
        now = self.index.zones_at(lat, lon)
        entered, left = ZoneIndex.crossings(self._inside.get(device, set()), now)
        self._inside[device] = now
        out.crossings += [ZoneCrossing(device, z, True, t, lat, lon) for z in sorted(entered)]
        out.crossings += [ZoneCrossing(device, z, False, t, lat, lon) for z in sorted(left)]

    def on_time(self, now_us: int) -> RuleOutput:
        """Deadlines due by the watermark ``now_us``."""
        return RuleOutput(self.evaluator.on_time(now_us)) if self.rules else RuleOutput()

    def active(self) -> dict[tuple[str, str], str]:
        """Open alerts: (device, rule id) → severity."""
        return self.evaluator.active()

    def snapshot(self) -> dict[str, Any]:
        """Builtins-only state."""
        return {
            "rules": self.evaluator.snapshot(),
            "inside": {d: sorted(z) for d, z in self._inside.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from a :meth:`snapshot` (the rules and zones are given to the constructor)."""
        self.evaluator.restore(state["rules"])
        self._inside = {d: set(z) for d, z in state["inside"].items()}
