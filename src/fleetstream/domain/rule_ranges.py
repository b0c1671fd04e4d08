"""An alert rule's definition: a boolean ``all``/``any`` expression of conditions over one scope
of devices, read from and written back to the API's builtins, with its human description.

:class:`RangeRule` is what a :class:`~fleetstream.domain.rules.RuleEvaluator` evaluates; its
expression (:data:`Expr`) indexes into its :class:`~fleetstream.domain.rule_conditions.Condition`
leaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetstream.domain.rule_conditions import _RANGE, Condition

Expr = int | tuple[str, tuple["Expr", ...]]
"""A condition's index in :attr:`RangeRule.conditions`, or ``("all" | "any", children)``."""


@dataclass(frozen=True, slots=True)
class RangeRule:
    """An alert rule: a boolean expression of conditions over one scope of devices.

    Attributes:
        id: Stable identifier (alerts are keyed by (device, rule id)).
        name: Human name.
        severity: Severity of a new alert.
        conditions: The leaves of ``expr``.
        expr: The expression over ``conditions`` (see :data:`Expr`).
        devices: Device ids in scope, or None.
        device_type: Device type in scope, or None (both None: the whole fleet).
        escalate_after_us: Escalate an alert still open this long after it opened.
        escalate_to: Severity after escalation.
        auto_clear_after_us: If set, an alert clears only once its expression has stayed false this long.
        webhook: URL to POST the alert to on open and clear, or None.
    """

    id: str
    name: str
    severity: str
    conditions: tuple[Condition, ...]
    expr: Expr
    devices: frozenset[str] | None = None
    device_type: str | None = None
    escalate_after_us: int | None = None
    escalate_to: str | None = None
    auto_clear_after_us: int | None = None
    webhook: str | None = None

    def __post_init__(self) -> None:
        if not self.id or not self.severity:
            msg = "rule: id and severity must be non-empty"
            raise ValueError(msg)
        if (self.escalate_after_us is None) != (self.escalate_to is None):
            msg = f"rule {self.id!r}: escalate_after_us and escalate_to go together"
            raise ValueError(msg)
        for name in ("escalate_after_us", "auto_clear_after_us"):
            value = getattr(self, name)
            if value is not None and value < 0:
                msg = f"rule {self.id!r}: {name} must not be negative, got {value}"
                raise ValueError(msg)

    def applies_to(self, device_id: str, device_type: str) -> bool:
        """Whether a device is in the rule's scope."""
        if self.devices is not None and device_id not in self.devices:
            return False
        return self.device_type is None or self.device_type == device_type

    def holds(self, latched: list[bool]) -> bool:
        """Evaluate the expression given each condition's latched state."""
        return _eval(self.expr, latched)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RangeRule:
        """Read a rule from builtins (the API's JSON body).

        Raises:
            ValueError: A message fit for a 422 response.
        """
        try:
            rid, when = str(d["id"]), d["when"]
        except KeyError as exc:
            msg = f"rule: missing field {exc.args[0]!r}"
            raise ValueError(msg) from None
        conditions: list[Condition] = []
        expr = _parse(when, conditions, rid)
        scope = d.get("scope") or {}
        devices = scope.get("devices")

        def opt_int(key: str) -> int | None:
            v = d.get(key)
            return None if v is None else int(v)

        return cls(
            id=rid,
            name=str(d.get("name", rid)),
            severity=str(d.get("severity", "warning")),
            conditions=tuple(conditions),
            expr=expr,
            devices=None if devices is None else frozenset(map(str, devices)),
            device_type=scope.get("device_type"),
            escalate_after_us=opt_int("escalate_after_us"),
            escalate_to=d.get("escalate_to"),
            auto_clear_after_us=opt_int("auto_clear_after_us"),
            webhook=None if d.get("webhook") is None else str(d["webhook"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The builtins :meth:`from_dict` reads back into an equal rule."""
        out: dict[str, Any] = {
            "kind": "range",
            "id": self.id,
            "name": self.name,
            "severity": self.severity,
            "when": _unparse(self.expr, self.conditions),
        }
        if self.devices is not None or self.device_type is not None:
            out["scope"] = {
                k: v
                for k, v in (
                    ("devices", None if self.devices is None else sorted(self.devices)),
                    ("device_type", self.device_type),
                )
                if v is not None
            }
        for key in ("escalate_after_us", "escalate_to", "auto_clear_after_us", "webhook"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def describe(self) -> str:
        """Human text of the expression: ``temp > 80 for 30 s and fan < 100``."""
        return _describe(self.expr, self.conditions)


def _parse(node: Any, out: list[Condition], rid: str) -> Expr:
    if not isinstance(node, Mapping):
        msg = f"rule {rid!r}: an expression is a condition or {{'all'|'any': [...]}}"
        raise ValueError(msg)
    for key in ("all", "any"):
        if key in node:
            items = node[key]
            if not isinstance(items, list) or not items:
                msg = f"rule {rid!r}: {key!r} needs a non-empty list"
                raise ValueError(msg)
            return (key, tuple(_parse(item, out, rid) for item in items))
    out.append(Condition.from_dict(node))
    return len(out) - 1


def _unparse(expr: Expr, conditions: tuple[Condition, ...]) -> dict[str, Any]:
    if isinstance(expr, int):
        c = conditions[expr]
        d: dict[str, Any] = {"sensor": c.sensor, "op": c.op}
        d["threshold"] = [c.low, c.high] if c.op in _RANGE else c.threshold
        if c.for_us:
            d["for_us"] = c.for_us
        if c.clear_at is not None:
            d["clear_at"] = c.clear_at
        return d
    kind, items = expr
    return {kind: [_unparse(e, conditions) for e in items]}


def _describe(expr: Expr, conditions: tuple[Condition, ...]) -> str:
    if isinstance(expr, int):
        c = conditions[expr]
        limit = f"[{c.low:g}, {c.high:g}]" if c.op in _RANGE else f"{c.threshold:g}"
        held = f" for {c.for_us / 1e6:g} s" if c.for_us else ""
        return f"{c.sensor} {c.op} {limit}{held}"
    kind, items = expr
    joined = (" and " if kind == "all" else " or ").join(_describe(e, conditions) for e in items)
    return f"({joined})" if len(items) > 1 else joined


def _eval(expr: Expr, latched: list[bool]) -> bool:
    if isinstance(expr, int):
        return latched[expr]
    kind, items = expr
    if kind == "all":
        return all(_eval(e, latched) for e in items)
    return any(_eval(e, latched) for e in items)
