"""Engines of the rules without durations: offline (dead man), rate of change, anomaly, zone.

Each keeps per-device arrays and one open flag (:class:`FlagEngine`); a batch is applied in
rounds of first occurrences (:func:`rounds`), and only rows that flip the flag take Python.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

import numpy as np

from fleetstream.domain.rule_engines import (
    NEVER,
    BoolArray,
    FlagEngine,
    IntArray,
    Intern,
    Rows,
    S,
    _grow,
    rounds,
)
from fleetstream.domain.rule_kinds import AnomalyRule, OfflineRule, RateRule, ZoneRule
from fleetstream.domain.rules import CLEAR, OPEN, RuleTransition


class OfflineEngine(FlagEngine):
    """Dead man: offline at ``last reading + after`` once the watermark reaches it, until the next reading.

    Deadlines sit in a heap with at most one entry per device; a popped entry whose device has
    read since is pushed back at its new deadline (lazy rescheduling), so a watermark step costs
    the devices due, never a sweep over the fleet. A reading at or past a deadline nobody fired
    yet (no :meth:`on_time` in between) opens and clears the alert, so the result does not depend
    on when timers run.
    """

    def __init__(self, rule: OfflineRule) -> None:
        super().__init__()
        self.rule: OfflineRule = rule
        self.last = np.zeros(0, np.int64)
        self.queued = np.zeros(0, np.bool_)
        self.heap: list[tuple[int, int]] = []

    def grow(self, cap: int) -> None:
        super().grow(cap)
        self.last = _grow(self.last, cap, NEVER)
        self.queued = _grow(self.queued, cap, False)

    def on_rows(self, rows: Rows, out: list[RuleTransition]) -> None:
        scope = rows.scope(self.rule)
        idx = np.arange(len(rows.dev)) if scope is None else np.flatnonzero(scope)
        dev, ts = rows.dev[idx], rows.ts[idx]
        if len(dev) > 1:  # the rows of one message are one reading here
            keep = np.r_[True, (dev[1:] != dev[:-1]) | (ts[1:] != ts[:-1])]
            dev, ts = dev[keep], ts[keep]
        after = self.rule.after_us
        for r in rounds(dev):
            d, t = dev[r], ts[r]
            last = self.last[d]
            gap = (last != NEVER) & (t >= last + after) & ~self.open[d]
            for i in np.flatnonzero(gap | self.open[d]).tolist():
                di, ti, li = int(d[i]), int(t[i]), int(last[i])
                if gap[i]:
                    self.emit(out, OPEN, di, after / S, li + after, f"no reading for {after / S:g} s")
                silent = (ti - li) / S
                self.emit(out, CLEAR, di, silent, ti, f"reading again after {silent:g} s")
            self.last[d] = np.maximum(last, t)
            for di in d[~self.queued[d]].tolist():
                heapq.heappush(self.heap, (int(self.last[di]) + after, di))
            self.queued[d] = True

    def on_time(self, now_us: int, out: list[RuleTransition]) -> None:
        heap, after = self.heap, self.rule.after_us
        while heap and heap[0][0] <= now_us:
            _, d = heapq.heappop(heap)
            due = int(self.last[d]) + after
            if due > now_us:
                heapq.heappush(heap, (due, d))
                continue
            self.queued[d] = False
            if not self.open[d]:
                self.emit(out, OPEN, d, after / S, due, f"no reading for {after / S:g} s")

    def snapshot(self) -> dict[str, Any]:
        seen = np.flatnonzero(self.last != NEVER).tolist()
        return {**super().snapshot(), "last": {self.names[d]: int(self.last[d]) for d in seen}}

    def restore(self, state: Mapping[str, Any], intern: Intern) -> None:
        super().restore(state, intern)
        for name, last in state["last"].items():
            d = intern(name)
            self.last[d] = last
            if not self.open[d]:
                self.queued[d] = True
                heapq.heappush(self.heap, (int(last) + self.rule.after_us, d))


class RateEngine(FlagEngine):
    """Open while ``|Δvalue / Δt|`` of consecutive readings exceeds the limit (``Δt <= 0`` ignored)."""

    def __init__(self, rule: RateRule) -> None:
        super().__init__()
        self.rule: RateRule = rule
        self.prev_v = np.zeros(0, np.float64)
        self.prev_t = np.zeros(0, np.int64)

    def grow(self, cap: int) -> None:
        super().grow(cap)
        self.prev_v = _grow(self.prev_v, cap, 0.0)
        self.prev_t = _grow(self.prev_t, cap, NEVER)

    def on_rows(self, rows: Rows, out: list[RuleTransition]) -> None:
        sel = rows.sensor(self.rule.sensor) & np.isfinite(rows.values)  # a NaN is no reading here
        scope = rows.scope(self.rule)
        idx = np.flatnonzero(sel if scope is None else sel & scope)
        dev, ts, vals = rows.dev[idx], rows.ts[idx], rows.values[idx]
        limit, sensor = self.rule.max_per_s, self.rule.sensor
        for r in rounds(dev):
            d, t, v = dev[r], ts[r], vals[r]
            pt = self.prev_t[d]
            valid = (pt != NEVER) & (t > pt)
            with np.errstate(divide="ignore", invalid="ignore"):
                rate = np.abs(v - self.prev_v[d]) / ((t - pt) / S)
            hit = valid & (rate > limit)
            flip = np.flatnonzero(valid & (hit != self.open[d]))
            for i in flip.tolist():
                x = float(rate[i])
                if hit[i]:
                    self.emit(out, OPEN, int(d[i]), x, int(t[i]), f"{sensor} changing {x:g}/s > {limit:g}/s")
                else:
                    self.emit(
                        out, CLEAR, int(d[i]), x, int(t[i]), f"{sensor} changing {x:g}/s <= {limit:g}/s"
                    )
            newer = valid | (pt == NEVER)
            self.prev_v[d[newer]], self.prev_t[d[newer]] = v[newer], t[newer]

    def snapshot(self) -> dict[str, Any]:
        seen = np.flatnonzero(self.prev_t != NEVER).tolist()
        prev = {self.names[d]: [float(self.prev_v[d]), int(self.prev_t[d])] for d in seen}
        return {**super().snapshot(), "prev": prev}

    def restore(self, state: Mapping[str, Any], intern: Intern) -> None:
        super().restore(state, intern)
        for name, (v, t) in state["prev"].items():
            d = intern(name)
            self.prev_v[d], self.prev_t[d] = v, t


class AnomalyEngine(FlagEngine):
    """Open while readings lie beyond ``k`` deviations of the device's EWMA mean and variance.

    The statistics are a plain running mean and variance for the first readings (weight
    ``1/n``, so warm-up estimates are not biased toward the first value), then an EWMA with
    ``alpha``; every reading updates them, so a lasting change of level is learnt, not alerted on
    for ever. A reading is scored against the statistics before it.
    """

    def __init__(self, rule: AnomalyRule) -> None:
        super().__init__()
        self.rule: AnomalyRule = rule
        self.n = np.zeros(0, np.int64)
        self.mean = np.zeros(0, np.float64)
        self.var = np.zeros(0, np.float64)

    def grow(self, cap: int) -> None:
        super().grow(cap)
        self.n, self.mean, self.var = (
            _grow(self.n, cap, 0),
            _grow(self.mean, cap, 0.0),
            _grow(self.var, cap, 0.0),
        )

    def on_rows(self, rows: Rows, out: list[RuleTransition]) -> None:
        sel = rows.sensor(self.rule.sensor) & np.isfinite(rows.values)
        scope = rows.scope(self.rule)
        idx = np.flatnonzero(sel if scope is None else sel & scope)
        dev, ts, vals = rows.dev[idx], rows.ts[idx], rows.values[idx]
        k, warmup, alpha = self.rule.k, self.rule.warmup, self.rule.alpha
        for r in rounds(dev):
            d, v = dev[r], vals[r]
            n, mean, var = self.n[d], self.mean[d], self.var[d]
            diff = v - mean
            sd = np.sqrt(var)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(sd > 0, np.abs(diff) / sd, np.where(diff == 0, 0.0, np.inf))
            scored = n >= warmup
            hit = scored & (z > k)
            for i in np.flatnonzero(scored & (hit != self.open[d])).tolist():
                zi, t = float(z[i]), int(ts[r][i])
                if hit[i]:
                    self.emit(out, OPEN, int(d[i]), float(v[i]), t, f"anomaly: {zi:.1f} deviations")
                else:
                    self.emit(out, CLEAR, int(d[i]), float(v[i]), t, f"normal again: {zi:.1f} deviations")
            w = np.maximum(alpha, 1.0 / (n + 1))
            incr = w * diff
            self.mean[d] = mean + incr
            self.var[d] = (1.0 - w) * (var + diff * incr)
            self.n[d] = n + 1

    def snapshot(self) -> dict[str, Any]:
        seen = np.flatnonzero(self.n).tolist()
        stats = {self.names[d]: [int(self.n[d]), float(self.mean[d]), float(self.var[d])] for d in seen}
        return {**super().snapshot(), "stats": stats}

    def restore(self, state: Mapping[str, Any], intern: Intern) -> None:
        super().restore(state, intern)
        for name, (n, mean, var) in state["stats"].items():
            d = intern(name)
            self.n[d], self.mean[d], self.var[d] = n, mean, var


class ZoneEngine(FlagEngine):
    """Open while a tracker's position breaks ``stay_inside`` / ``stay_outside`` of its zone."""

    def __init__(self, rule: ZoneRule) -> None:
        super().__init__()
        self.rule: ZoneRule = rule

    def on_positions(
        self,
        d: IntArray,
        ts: IntArray,
        inside: BoolArray | None,
        scope: BoolArray | None,
        out: list[RuleTransition],
    ) -> None:
        """One round of positions (each device once); ``inside`` is None when the zone is unknown."""
        if inside is None:
            return  # a rule naming a zone that does not exist (yet) never fires
        bad = ~inside if self.rule.must == "stay_inside" else inside
        flip = bad != self.open[d]
        if scope is not None:
            flip &= scope
        name, zid = self.rule.must, self.rule.zone_id
        for i in np.flatnonzero(flip).tolist():
            if bad[i]:
                text = f"left zone {zid}" if name == "stay_inside" else f"entered zone {zid}"
                self.emit(out, OPEN, int(d[i]), 1.0, int(ts[i]), text)
            else:
                text = f"back in zone {zid}" if name == "stay_inside" else f"out of zone {zid} again"
                self.emit(out, CLEAR, int(d[i]), 0.0, int(ts[i]), text)

    def on_rows(self, rows: Rows, out: list[RuleTransition]) -> None:
        return  # fed positions by the book, see on_positions
