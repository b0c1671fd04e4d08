"""Vectorised evaluation of one rule over a batch: state in arrays indexed by an interned device id.

Each engine computes, with numpy over a whole batch, which rows may change its state; only
those take a Python path that emits a :class:`RuleTransition`. A device that appears several
times in a batch is handled in *rounds*: round ``r`` holds every device's ``r``-th row, so a
round has each device at most once and the array updates of one round never collide, and the
rows of one device are applied in log order. Results are therefore the same whatever the
batch boundaries (see ``tests/unit/test_rulebook.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fleetstream.domain.rule_kinds import AnomalyRule, OfflineRule, RateRule, ZoneRule
from fleetstream.domain.rules import CLEAR, OPEN, Condition, RangeRule, RuleEvaluator, RuleTransition

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
NEVER = np.iinfo(np.int64).min
S = 1_000_000
Intern = Callable[[str], int]


def rounds(keys: IntArray) -> list[npt.NDArray[np.intp]]:
    """Row indices by occurrence: round ``r`` holds the ``r``-th row of every key, in log order."""
    n = len(keys)
    if n == 0:
        return []
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    if len(starts) == n:
        return [np.arange(n)]
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, np.intp)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)
    return [np.flatnonzero(rank == r) for r in range(int(sizes.max()))]


@dataclass
class Rows:
    """One batch as the engines see it (interned device ids, numpy columns)."""

    dev: IntArray
    ids: Sequence[str]
    types: npt.NDArray[np.object_]
    sensors: npt.NDArray[np.object_]
    values: FloatArray
    ts: IntArray
    _masks: dict[str, BoolArray] = field(default_factory=dict)

    def sensor(self, name: str) -> BoolArray:
        """Rows of one sensor (computed once per batch)."""
        mask = self._masks.get(name)
        if mask is None:
            mask = self._masks[name] = self.sensors == name
        return mask

    def scope(self, rule: Any) -> BoolArray | None:
        """Rows in a rule's scope, or None for all of them."""
        mask: BoolArray | None = None
        if rule.device_type is not None:
            mask = self.types == rule.device_type
        if rule.devices is not None:
            mine = np.fromiter((d in rule.devices for d in self.ids), np.bool_, len(self.ids))
            mask = mine if mask is None else mask & mine
        return mask


def _grow(a: npt.NDArray[Any], cap: int, fill: Any) -> npt.NDArray[Any]:
    out = np.full((cap, *a.shape[1:]), fill, a.dtype)
    out[: len(a)] = a
    return out


def _triggers(c: Condition, v: FloatArray) -> BoolArray:
    # Condition.__post_init__ guarantees the limits its operator needs.
    t, low, high = (np.nan if x is None else x for x in (c.threshold, c.low, c.high))
    if c.op == ">":
        return v > t
    if c.op == ">=":
        return v >= t
    if c.op == "<":
        return v < t
    if c.op == "<=":
        return v <= t
    inside = (v >= low) & (v <= high)
    return inside if c.op == "inside" else ~inside


class RangeEngine:
    """A :class:`RangeRule` through :class:`RuleEvaluator`, fed only rows that can change its state.

    A row is a no-op for a device with no state (no alert, nothing latched or pending) unless a
    condition triggers: so the Python path takes triggering rows, rows of busy devices, and rows
    after a device's first trigger in the batch.
    """

    def __init__(self, rule: RangeRule) -> None:
        self.rule = rule
        self.ev = RuleEvaluator([rule])
        self.busy = np.zeros(0, np.bool_)

    def grow(self, cap: int) -> None:
        self.busy = _grow(self.busy, cap, False)

    def on_rows(self, rows: Rows, out: list[RuleTransition]) -> None:
        sel = np.zeros(len(rows.dev), np.bool_)
        trig = np.zeros(len(rows.dev), np.bool_)
        for c in self.rule.conditions:
            mask = rows.sensor(c.sensor)
            sel |= mask
            trig |= mask & _triggers(c, rows.values)
        scope = rows.scope(self.rule)
        if scope is not None:
            sel &= scope
        idx = np.flatnonzero(sel)
        if not len(idx):
            return
        dev, hit = rows.dev[idx], trig[idx]
        pos = np.arange(len(idx))
        first = np.full(len(self.busy), len(idx), np.intp)
        np.minimum.at(first, dev[hit], pos[hit])
        take = idx[hit | self.busy[dev] | (pos > first[dev])]
        rid, ev = self.rule.id, self.ev
        for i in take.tolist():
            name = rows.ids[i]
            out += ev.on_reading(name, rows.types[i], rows.sensors[i], float(rows.values[i]), int(rows.ts[i]))
            self.busy[rows.dev[i]] = ev.busy(name, rid)

    def on_time(self, now_us: int, out: list[RuleTransition]) -> None:
        out += self.ev.on_time(now_us)

    def active(self) -> dict[tuple[str, str], str]:
        return self.ev.active()

    def close(self, now_us: int, reason: str) -> list[RuleTransition]:
        return self.ev.close_all(now_us, reason)

    def snapshot(self) -> dict[str, Any]:
        return self.ev.snapshot()

    def restore(self, state: Mapping[str, Any], intern: Intern) -> None:
        self.ev.restore(state)
        for t in state["tracks"]:
            d = intern(t["device_id"])  # first: interning may grow (replace) the array
            self.busy[d] = True


class FlagEngine:
    """Rules whose alert is open exactly while the last evidence says so (zone, offline, rate, anomaly)."""

    rule: ZoneRule | OfflineRule | RateRule | AnomalyRule

    def __init__(self) -> None:
        self.open = np.zeros(0, np.bool_)
        self.first = np.zeros(0, np.float64)
        self.names: list[str] = []  # the book's interned ids, shared

    def grow(self, cap: int) -> None:
        self.open = _grow(self.open, cap, False)
        self.first = _grow(self.first, cap, 0.0)

    def emit(self, out: list[RuleTransition], kind: str, d: int, value: float, ts: int, message: str) -> None:
        if kind == OPEN:
            self.open[d], self.first[d] = True, value
        else:
            self.open[d] = False
        r = self.rule
        out.append(
            RuleTransition(kind, r.id, self.names[d], r.severity, float(self.first[d]), value, ts, message)
        )

    def on_rows(self, rows: Rows, out: list[RuleTransition]) -> None:
        """Apply a batch (each kind overrides this)."""
        raise NotImplementedError

    def on_time(self, now_us: int, out: list[RuleTransition]) -> None:
        return

    def active(self) -> dict[tuple[str, str], str]:
        return {(self.names[d], self.rule.id): self.rule.severity for d in np.flatnonzero(self.open).tolist()}

    def close(self, now_us: int, reason: str) -> list[RuleTransition]:
        out: list[RuleTransition] = []
        for d in np.flatnonzero(self.open).tolist():
            self.emit(out, CLEAR, d, float(self.first[d]), now_us, reason)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"open": {self.names[d]: float(self.first[d]) for d in np.flatnonzero(self.open).tolist()}}

    def restore(self, state: Mapping[str, Any], intern: Intern) -> None:
        for name, first in state["open"].items():
            d = intern(name)
            self.open[d], self.first[d] = True, float(first)
