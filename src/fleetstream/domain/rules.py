"""Range rules over readings: thresholds held for a duration, hysteresis, ``all``/``any`` nesting.

A :class:`RangeRule` names a boolean expression of :class:`Condition` objects,
each about one sensor. A :class:`RuleEvaluator` keeps, per (device, rule), the
state of every condition and at most one active alert, and emits a
:class:`RuleTransition` when an alert opens, escalates or clears.

A condition *latches* once its trigger (``> 80``) has held continuously for
``for_us`` of event time, and unlatches only once its release holds: the
opposite of the trigger, or with hysteresis ``clear_at`` past the threshold
(``< 78``). So a value hovering at the edge opens one alert, not a stream of
them. Deadlines (a duration elapsing, an escalation, an auto-clear) are
timestamped at the deadline itself and fire just before the first reading of
the device past them, or on :meth:`RuleEvaluator.on_time`; results therefore do
not depend on when timers run, only on the event times.

Example:
    >>> rule = RangeRule.from_dict({"id": "hot", "name": "Hot", "severity": "warning",
    ...     "when": {"sensor": "temperature", "op": ">", "threshold": 80, "clear_at": 78}})
    >>> ev = RuleEvaluator([rule])
    >>> [t.kind for v, ts in [(80.1, 1), (79.9, 2), (80.1, 3), (77.0, 4)]
    ...  for t in ev.on_reading("d1", "Oven", "temperature", v, ts)]
    ['open', 'clear']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OPEN, ESCALATE, CLEAR = "open", "escalate", "clear"
_COMPARE = frozenset((">", ">=", "<", "<="))
_RANGE = frozenset(("outside", "inside"))
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on one sensor's value, optionally held for ``for_us`` and with hysteresis.

    Attributes:
        sensor: The sensor whose readings it tests.
        op: ``>``, ``>=``, ``<``, ``<=`` (against ``threshold``), ``outside`` or ``inside`` ``[low, high]``.
        threshold: The limit of a comparison.
        low: Lower bound of a range (inclusive for ``inside``).
        high: Upper bound of a range.
        for_us: How long the trigger must hold continuously (event time) before the condition latches.
        clear_at: For comparisons only: the value the reading must pass (strictly) to release.
    """

    sensor: str
    op: str
    threshold: float | None = None
    low: float | None = None
    high: float | None = None
    for_us: int = 0
    clear_at: float | None = None

    def __post_init__(self) -> None:
        where = f"condition on {self.sensor!r}"
        if not self.sensor:
            msg = "condition: sensor must be a non-empty name"
            raise ValueError(msg)
        if self.op in _COMPARE:
            if self.threshold is None:
                msg = f"{where}: operator {self.op!r} needs a threshold"
                raise ValueError(msg)
        elif self.op in _RANGE:
            if self.low is None or self.high is None:
                msg = f"{where}: operator {self.op!r} needs [min, max]"
                raise ValueError(msg)
            if self.low > self.high:
                msg = f"{where}: min {self.low} is greater than max {self.high}"
                raise ValueError(msg)
            if self.clear_at is not None:
                msg = f"{where}: clear_at applies to >, >=, <, <= only"
                raise ValueError(msg)
        else:
            msg = f"{where}: unknown operator {self.op!r} (use >, >=, <, <=, outside, inside)"
            raise ValueError(msg)
        if self.for_us < 0:
            msg = f"{where}: for_us must not be negative, got {self.for_us}"
            raise ValueError(msg)
        if self.clear_at is not None and self.threshold is not None:
            upward = self.op in (">", ">=")
            if (upward and self.clear_at > self.threshold) or (not upward and self.clear_at < self.threshold):
                side = "at or below" if upward else "at or above"
                msg = (
                    f"{where}: clear_at {self.clear_at} must be {side} the threshold "
                    f"{self.threshold} for {self.op!r}"
                )
                raise ValueError(msg)

    def triggers(self, value: float) -> bool:
        """Whether ``value`` meets the condition's trigger."""
        op, t = self.op, self.threshold
        if op == ">":
            return value > t  # type: ignore[operator]
        if op == ">=":
            return value >= t  # type: ignore[operator]
        if op == "<":
            return value < t  # type: ignore[operator]
        if op == "<=":
            return value <= t  # type: ignore[operator]
        inside = self.low <= value <= self.high  # type: ignore[operator]
        return inside if op == "inside" else not inside

    def releases(self, value: float) -> bool:
        """Whether ``value`` releases a latched condition (hysteresis applied)."""
        if self.clear_at is None:
            return not self.triggers(value)
        return value < self.clear_at if self.op in (">", ">=") else value > self.clear_at

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition:
        """Read ``{"sensor", "op", "threshold": x | [min, max], "for_us"?, "clear_at"?}``."""
        try:
            sensor, op = str(d["sensor"]), str(d["op"])
        except KeyError as exc:
            msg = f"condition: missing field {exc.args[0]!r}"
            raise ValueError(msg) from None
        raw = d.get("threshold")
        threshold = low = high = None
        if isinstance(raw, list | tuple):
            if len(raw) != 2:
                msg = f"condition on {sensor!r}: a range threshold is [min, max]"
                raise ValueError(msg)
            low, high = float(raw[0]), float(raw[1])
        elif raw is not None:
            threshold = float(raw)
        clear = d.get("clear_at")
        return cls(
            sensor, op, threshold, low, high, int(d.get("for_us", 0)), None if clear is None else float(clear)
        )


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


@dataclass(frozen=True, slots=True)
class RuleTransition:
    """An alert opening, escalating or clearing, at an event time (µs)."""

    kind: str
    rule_id: str
    device_id: str
    severity: str
    first_value: float
    last_value: float
    ts: int
    message: str = field(default="", compare=False)  # human text; equality is about what happened


@dataclass(slots=True)
class _Track:
    """State of one (device, rule)."""

    latched: list[bool]
    pending: list[int | None]  # when each unlatched trigger began holding
    last_value: float = 0.0
    opened_at: int | None = None  # None: no active alert
    severity: str = ""
    first_value: float = 0.0
    escalated: bool = False
    false_since: int | None = None  # open alert whose expression went false (auto-clear)


class RuleEvaluator:
    """The rules of one partition: feed it readings in order, collect alert transitions.

    Example:
        >>> rule = RangeRule.from_dict({"id": "r", "name": "Hot", "severity": "warning",
        ...     "when": {"sensor": "t", "op": ">", "threshold": 80, "for_us": 30}})
        >>> ev = RuleEvaluator([rule])
        >>> ev.on_reading("d", "Oven", "t", 81.0, 0)
        []
        >>> [(t.kind, t.ts) for t in ev.on_time(45)]
        [('open', 30)]
    """

    def __init__(self, rules: Iterable[RangeRule]) -> None:
        self.rules = {r.id: r for r in rules}
        self._tracks: dict[tuple[str, str], _Track] = {}

    def on_reading(
        self, device_id: str, device_type: str, sensor: str, value: float, ts: int
    ) -> list[RuleTransition]:
        """Apply one reading (event time ``ts``, µs) to every rule in scope that tests ``sensor``."""
        out: list[RuleTransition] = []
        for rule in self.rules.values():
            if not rule.applies_to(device_id, device_type):
                continue
            idx = [i for i, c in enumerate(rule.conditions) if c.sensor == sensor]
            if not idx:
                continue
            key = (device_id, rule.id)
            track = self._tracks.get(key)
            if track is None:
                n = len(rule.conditions)
                track = self._tracks[key] = _Track([False] * n, [None] * n)
            self._advance(out, rule, device_id, track, ts)
            track.last_value = value
            for i in idx:
                cond = rule.conditions[i]
                if track.latched[i]:
                    if cond.releases(value):
                        track.latched[i] = False
                        track.pending[i] = None
                elif cond.triggers(value):
                    since = track.pending[i]
                    if since is None:
                        since = track.pending[i] = ts
                    if ts - since >= cond.for_us:
                        track.latched[i], track.pending[i] = True, None
                else:
                    track.pending[i] = None
            self._settle(out, rule, device_id, track, ts)
        return out

    def on_time(self, now_us: int) -> list[RuleTransition]:
        """Fire every deadline (duration, escalation, auto-clear) at or before ``now_us`` (event time)."""
        out: list[RuleTransition] = []
        for (device_id, rule_id), track in self._tracks.items():
            self._advance(out, self.rules[rule_id], device_id, track, now_us)
        # Tracks are kept in arrival order, which a restore does not preserve: sort so the output
        # depends on the event times only (stable: one track's transitions keep their order).
        out.sort(key=lambda t: (t.ts, t.device_id, t.rule_id))
        return out

    def active(self) -> dict[tuple[str, str], str]:
        """Open alerts: (device, rule id) to current severity."""
        return {k: t.severity for k, t in self._tracks.items() if t.opened_at is not None}

    def close_all(self, now_us: int, reason: str) -> list[RuleTransition]:
        """Clear every open alert at ``now_us`` (the rule was removed or redefined) and forget all state."""
        out = []
        for (dev, rid), tr in sorted(self._tracks.items()):
            if tr.opened_at is not None:
                t = RuleTransition(
                    CLEAR, rid, dev, tr.severity, tr.first_value, tr.last_value, now_us, reason
                )
                out.append(t)
        self._tracks = {}
        return out

    def busy(self, device_id: str, rule_id: str) -> bool:
        """Whether (device, rule) has any state (an alert, a latched or pending condition).

        A track with none is dropped, so that :meth:`on_time` only visits busy ones: a
        reading that does not trigger leaves such a device exactly as if it had no track.
        """
        key = (device_id, rule_id)
        tr = self._tracks.get(key)
        if tr is None:
            return False
        if tr.opened_at is None and not any(tr.latched) and all(p is None for p in tr.pending):
            del self._tracks[key]
            return False
        return True

    def _advance(self, out: list[RuleTransition], rule: RangeRule, dev: str, tr: _Track, now: int) -> None:
        # Fire due deadlines one at a time, earliest first, each at its own event time.
        while True:
            due, what = _next_deadline(rule, tr)
            if due is None or due > now:
                return
            if what == "escalate":
                tr.escalated = True
                tr.severity = rule.escalate_to or tr.severity
                out.append(self._emit(ESCALATE, rule, dev, tr, due))
            elif what == "clear":
                out.append(self._emit(CLEAR, rule, dev, tr, due))
                tr.opened_at = tr.false_since = None
            else:
                for i, since in enumerate(tr.pending):
                    if since is not None and since + rule.conditions[i].for_us <= due:
                        tr.latched[i], tr.pending[i] = True, None
                self._settle(out, rule, dev, tr, due)

    def _settle(self, out: list[RuleTransition], rule: RangeRule, dev: str, tr: _Track, ts: int) -> None:
        if rule.holds(tr.latched):
            tr.false_since = None
            if tr.opened_at is None:
                tr.opened_at, tr.severity, tr.escalated = ts, rule.severity, False
                tr.first_value = tr.last_value
                out.append(self._emit(OPEN, rule, dev, tr, ts))
        elif tr.opened_at is not None:
            if rule.auto_clear_after_us is None:
                out.append(self._emit(CLEAR, rule, dev, tr, ts))
                tr.opened_at = None
            elif tr.false_since is None:
                tr.false_since = ts

    @staticmethod
    def _emit(kind: str, rule: RangeRule, dev: str, tr: _Track, ts: int) -> RuleTransition:
        text = rule.describe()
        if kind == CLEAR:
            text = f"cleared: {text} no longer holds (value {tr.last_value:g})"
        elif kind == ESCALATE:
            text = f"escalated to {tr.severity}: {text}"
        else:
            text = f"{text} (value {tr.last_value:g})"
        return RuleTransition(kind, rule.id, dev, tr.severity, tr.first_value, tr.last_value, ts, text)

    # -- state ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Builtins-only state (JSON-ready), for :meth:`restore`."""
        tracks = [
            {
                "device_id": dev,
                "rule_id": rid,
                "latched": list(t.latched),
                "pending": list(t.pending),
                "last_value": t.last_value,
                "opened_at": t.opened_at,
                "severity": t.severity,
                "first_value": t.first_value,
                "escalated": t.escalated,
                "false_since": t.false_since,
            }
            for (dev, rid), t in sorted(self._tracks.items())
        ]
        return {"format": SNAPSHOT_FORMAT, "tracks": tracks}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace the state with a :meth:`snapshot`; tracks of rules no longer known are dropped.

        Raises:
            ValueError: Unknown snapshot format.
        """
        if state.get("format") != SNAPSHOT_FORMAT:
            msg = f"rule snapshot: unknown format {state.get('format')!r}"
            raise ValueError(msg)
        self._tracks = {}
        for t in state["tracks"]:
            rule = self.rules.get(t["rule_id"])
            if rule is None or len(t["latched"]) != len(rule.conditions):
                continue  # the rule was removed or redefined: start it afresh
            self._tracks[(t["device_id"], t["rule_id"])] = _Track(
                [bool(x) for x in t["latched"]],
                list(t["pending"]),
                float(t["last_value"]),
                t["opened_at"],
                str(t["severity"]),
                float(t["first_value"]),
                bool(t["escalated"]),
                t["false_since"],
            )


def _next_deadline(rule: RangeRule, tr: _Track) -> tuple[int | None, str]:
    due: int | None = None
    what = ""
    for i, since in enumerate(tr.pending):
        if since is not None:
            at = since + rule.conditions[i].for_us
            if due is None or at < due:
                due, what = at, "latch"
    if tr.opened_at is not None:
        if rule.escalate_after_us is not None and not tr.escalated:
            at = tr.opened_at + rule.escalate_after_us
            if due is None or at < due:
                due, what = at, "escalate"
        if rule.auto_clear_after_us is not None and tr.false_since is not None:
            at = tr.false_since + rule.auto_clear_after_us
            if due is None or at < due:
                due, what = at, "clear"
    return due, what
