"""One test of a range rule on one sensor's value: a threshold (or a range) crossed, held for a
duration, and released with hysteresis.

A :class:`Condition` is a leaf of a :class:`~fleetstream.domain.rules.RangeRule`'s expression;
the :class:`~fleetstream.domain.rules.RuleEvaluator` latches and releases it reading by reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_COMPARE = frozenset((">", ">=", "<", "<="))
_RANGE = frozenset(("outside", "inside"))


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
