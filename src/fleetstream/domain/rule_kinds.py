"""Rule and zone definitions of every kind, read from and written to the API's JSON.

:func:`parse_rule` dispatches on ``"kind"`` (``range`` when absent) and :func:`parse_zone`
reads a rectangle or a GeoJSON geometry. Every definition error is a :class:`ValueError`
whose message names the rule and the field, fit for a 422 response. Each rule's
``to_dict()`` is read back by :func:`parse_rule` into an equal rule.

Example:
    >>> r = parse_rule({"kind": "offline", "id": "quiet", "after_s": 120})
    >>> r.after_us, parse_rule(r.to_dict()) == r
    (120000000, True)
    >>> parse_rule({"kind": "rate", "id": "r", "sensor": "t", "max_per_s": -1})
    Traceback (most recent call last):
    ...
    ValueError: rule 'r': max_per_s must be a positive number, got -1
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetstream.domain.geometry import Rectangle, Zone
from fleetstream.domain.rules import RangeRule

S = 1_000_000
MUSTS = ("stay_inside", "stay_outside")
_COMMON = ("kind", "id", "name", "severity", "scope", "webhook")


@dataclass(frozen=True, slots=True)
class _Base:
    """Fields every kind shares; scope as in :class:`RangeRule` (both None: the whole fleet)."""

    id: str
    name: str
    severity: str
    devices: frozenset[str] | None
    device_type: str | None
    webhook: str | None

    def applies_to(self, device_id: str, device_type: str) -> bool:
        """Whether a device is in the rule's scope."""
        if self.devices is not None and device_id not in self.devices:
            return False
        return self.device_type is None or self.device_type == device_type

    def _common(self, kind: str) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": kind, "id": self.id, "name": self.name, "severity": self.severity}
        scope: dict[str, Any] = {}
        if self.devices is not None:
            scope["devices"] = sorted(self.devices)
        if self.device_type is not None:
            scope["device_type"] = self.device_type
        if scope:
            out["scope"] = scope
        if self.webhook is not None:
            out["webhook"] = self.webhook
        return out


@dataclass(frozen=True, slots=True)
class ZoneRule(_Base):
    """A tracker must stay inside (or outside) a zone; open while it does not."""

    zone_id: str
    must: str

    def to_dict(self) -> dict[str, Any]:
        """Builtins :func:`parse_rule` reads back."""
        return {**self._common("zone"), "zone_id": self.zone_id, "must": self.must}


@dataclass(frozen=True, slots=True)
class OfflineRule(_Base):
    """No reading from a device for ``after_us`` of event time: offline until its next reading."""

    after_us: int

    def to_dict(self) -> dict[str, Any]:
        """Builtins :func:`parse_rule` reads back."""
        return {**self._common("offline"), "after_s": self.after_us / S}


@dataclass(frozen=True, slots=True)
class RateRule(_Base):
    """``|Δvalue / Δt|`` between consecutive readings of a sensor above ``max_per_s``."""

    sensor: str
    max_per_s: float

    def to_dict(self) -> dict[str, Any]:
        """Builtins :func:`parse_rule` reads back."""
        return {**self._common("rate"), "sensor": self.sensor, "max_per_s": self.max_per_s}


@dataclass(frozen=True, slots=True)
class AnomalyRule(_Base):
    """A reading more than ``k`` deviations from its device's EWMA mean, after ``warmup`` readings."""

    sensor: str
    k: float = 4.0
    warmup: int = 30
    alpha: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        """Builtins :func:`parse_rule` reads back."""
        return {
            **self._common("anomaly"),
            "sensor": self.sensor,
            "k": self.k,
            "warmup": self.warmup,
            "alpha": self.alpha,
        }


Rule = RangeRule | ZoneRule | OfflineRule | RateRule | AnomalyRule


def _where(d: Mapping[str, Any]) -> str:
    return f"rule {d.get('id')!r}"


def _text(d: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str) or not value:
        msg = f"{where}: {key} must be a non-empty string, got {value!r}"
        raise ValueError(msg)
    return value


def _number(d: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        msg = f"{where}: {key} must be a finite number, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _positive(d: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = _number(d, key, where, default)
    if value <= 0:
        msg = f"{where}: {key} must be a positive number, got {d.get(key, default)!r}"
        raise ValueError(msg)
    return value


def _common(d: Mapping[str, Any]) -> dict[str, Any]:
    where = _where(d)
    rid = _text(d, "id", "rule")
    scope = d.get("scope") or {}
    if not isinstance(scope, Mapping):
        msg = f"{where}: scope must be an object with devices and/or device_type"
        raise ValueError(msg)
    devices = scope.get("devices")
    if devices is not None and (
        not isinstance(devices, list) or not all(isinstance(x, str) for x in devices)
    ):
        msg = f"{where}: scope.devices must be a list of device ids"
        raise ValueError(msg)
    device_type = scope.get("device_type")
    if device_type is not None and not isinstance(device_type, str):
        msg = f"{where}: scope.device_type must be a string"
        raise ValueError(msg)
    webhook = d.get("webhook")
    if webhook is not None and not (isinstance(webhook, str) and webhook.startswith(("http://", "https://"))):
        msg = f"{where}: webhook must be an http:// or https:// URL, got {webhook!r}"
        raise ValueError(msg)
    return {
        "id": rid,
        "name": _text(d, "name", where, rid),
        "severity": _text(d, "severity", where, "warning"),
        "devices": None if devices is None else frozenset(devices),
        "device_type": device_type,
        "webhook": webhook,
    }


def _unknown(d: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(d) - set(_COMMON) - set(allowed))
    if extra:
        msg = f"{_where(d)}: unknown field(s) {', '.join(map(repr, extra))}"
        raise ValueError(msg)


def parse_rule(d: Mapping[str, Any]) -> Rule:
    """Read a rule of any kind from builtins (the API's JSON body).

    Raises:
        ValueError: A message naming the rule and the wrong field.
    """
    if not isinstance(d, Mapping):
        msg = "rule: expected a JSON object"
        raise ValueError(msg)
    kind = d.get("kind", "range")
    where = _where(d)
    if kind == "range":
        _unknown(d, ("when", "escalate_after_us", "escalate_to", "auto_clear_after_us"))
        _common(d)
        try:
            return RangeRule.from_dict(d)
        except (TypeError, AttributeError) as exc:
            msg = f"{where}: malformed 'when' expression ({exc})"
            raise ValueError(msg) from None
        except ValueError as exc:
            text = str(exc)
            raise ValueError(text if text.startswith(("rule", "condition")) else f"{where}: {text}") from None
    if kind == "zone":
        _unknown(d, ("zone_id", "must"))
        must = d.get("must", "stay_inside")
        if must not in MUSTS:
            msg = f"{where}: must is 'stay_inside' or 'stay_outside', got {must!r}"
            raise ValueError(msg)
        return ZoneRule(**_common(d), zone_id=_text(d, "zone_id", where), must=must)
    if kind == "offline":
        _unknown(d, ("after_s",))
        return OfflineRule(**_common(d), after_us=round(_positive(d, "after_s", where) * S))
    if kind == "rate":
        _unknown(d, ("sensor", "max_per_s"))
        return RateRule(
            **_common(d), sensor=_text(d, "sensor", where), max_per_s=_positive(d, "max_per_s", where)
        )
    if kind == "anomaly":
        _unknown(d, ("sensor", "k", "warmup", "alpha"))
        warmup = d.get("warmup", 30)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 2:
            msg = f"{where}: warmup must be an integer >= 2, got {warmup!r}"
            raise ValueError(msg)
        alpha = _positive(d, "alpha", where, 0.05)
        if alpha >= 1:
            msg = f"{where}: alpha must be in (0, 1), got {alpha:g}"
            raise ValueError(msg)
        return AnomalyRule(
            **_common(d),
            sensor=_text(d, "sensor", where),
            k=_positive(d, "k", where, 4.0),
            warmup=warmup,
            alpha=alpha,
        )
    msg = f"{where}: unknown kind {kind!r} (use range, zone, offline, rate, anomaly)"
    raise ValueError(msg)


def parse_zone(d: Mapping[str, Any]) -> Zone:
    """Read ``{"id", "name", "rectangle": {"south", "west", "north", "east"}}`` or with ``"geometry"``.

    Raises:
        ValueError: A message naming the zone and the wrong field.
    """
    if not isinstance(d, Mapping):
        msg = "zone: expected a JSON object"
        raise ValueError(msg)
    zid = _text(d, "id", "zone")
    where = f"zone {zid!r}"
    name = _text(d, "name", where, zid)
    rect, geometry = d.get("rectangle"), d.get("geometry")
    if (rect is None) == (geometry is None):
        msg = f"{where}: give exactly one of rectangle or geometry"
        raise ValueError(msg)
    try:
        if rect is not None:
            if not isinstance(rect, Mapping):
                msg = "rectangle must be an object with south, west, north, east"
                raise ValueError(msg)
            box = [_number(rect, k, "rectangle") for k in ("south", "west", "north", "east")]
            return Zone.rectangle(zid, name, *box)
        if not isinstance(geometry, Mapping):
            msg = "geometry must be a GeoJSON Polygon or MultiPolygon object"
            raise ValueError(msg)
        return Zone.from_geojson(zid, name, geometry)
    except (TypeError, IndexError) as exc:
        msg = f"{where}: malformed geometry ({exc})"
        raise ValueError(msg) from None
    except ValueError as exc:
        msg = f"{where}: {exc}"
        raise ValueError(msg) from None


def zone_to_dict(zone: Zone) -> dict[str, Any]:
    """Builtins for a zone made by :func:`parse_zone` from a rectangle (others keep their input JSON)."""
    shape = zone.shape
    if not isinstance(shape, Rectangle):
        msg = f"zone {zone.id!r}: only rectangles are written back; store the GeoJSON as given"
        raise ValueError(msg)
    box = {"south": shape.south, "west": shape.west, "north": shape.north, "east": shape.east}
    return {"id": zone.id, "name": zone.name, "rectangle": box}
