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

The definitions live beside this module: :class:`Condition` in
:mod:`~fleetstream.domain.rule_conditions`, :class:`RangeRule` in
:mod:`~fleetstream.domain.rule_ranges`; this one holds their evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Re-exported: rule code and tests import the definitions from here.
from fleetstream.domain.rule_conditions import Condition as Condition
from fleetstream.domain.rule_ranges import Expr as Expr
from fleetstream.domain.rule_ranges import RangeRule as RangeRule

OPEN, ESCALATE, CLEAR = "open", "escalate", "clear"
SNAPSHOT_FORMAT = 1


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
