"""Handing a window table's windows out: due versions, copies of those open, in emission order.

:class:`WindowEmission` holds the steps of :class:`~fleetstream.domain.window_table.WindowTable`
that turn its slots into :class:`~fleetstream.domain.window_records.WindowAggregate` records (with the
quantile sketches of their groups) and drop the windows past the allowed lateness.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from fleetstream.domain.sketch import QuantileSketch
from fleetstream.domain.window_records import I64_MIN, WindowAggregate
from fleetstream.domain.window_series import SeriesIndex
from fleetstream.domain.window_state import Packing, WindowGroup, WindowSlots


class WindowEmission:
    """The emitting steps of :class:`~fleetstream.domain.window_table.WindowTable`, whose
    ``__init__`` sets up the state declared here."""

    _sizes: tuple[int, ...]
    _packing: Packing
    series: SeriesIndex
    _slot_of: dict[int, int]
    _slots: WindowSlots
    _groups: dict[tuple[int, int], WindowGroup]
    _line_u: np.ndarray
    _line_slot: np.ndarray

    def emit(self, wm: int, horizon: int) -> list[WindowAggregate]:
        """New versions of the windows due at watermark ``wm``; drops those ending by ``horizon``."""
        out: list[WindowAggregate] = []
        due = [g for g in self._groups.values() if g.end <= wm and (g.dirty or not g.emitted)]
        if due:
            S = self._slots
            used = S.used
            ready = self._in_order(np.flatnonzero(S.changed[:used] & (S.end[:used] <= wm)))
            S.version[ready] += 1
            S.changed[ready] = False
            out = self._aggregates(ready, self._sketches(ready, due))
            for group in due:
                group.emitted, group.dirty = True, False
        done = [k for k, g in self._groups.items() if g.end <= horizon]
        if done:
            self._finalise(horizon)
            for k in done:
                del self._groups[k]
        return out

    def open_windows(self) -> list[WindowAggregate]:
        """Copies of the windows in memory (in progress or within the lateness), in emission order.

        ``version`` is that of the last emission (0: not emitted yet).
        """
        alive = self._in_order(self._slots.alive())
        return self._aggregates(alive, self._sketches(alive, list(self._groups.values())))

    def _finalise(self, horizon: int) -> None:
        S = self._slots
        final = np.flatnonzero(S.end[: S.used] <= horizon)
        line = S.line[final]
        stale = self._line_slot[line] == final
        self._line_u[line[stale]] = I64_MIN
        deque(map(self._slot_of.pop, map(S.key.__getitem__, final.tolist())), maxlen=0)
        S.release(final)

    def _aggregates(self, slots: np.ndarray, sketches: list[QuantileSketch]) -> list[WindowAggregate]:
        S = self._slots
        count = S.count[slots]
        s1 = S.s1[slots]
        total = S.shift[slots] * count + s1
        m2 = np.maximum(S.s2[slots] - s1 * s1 / count, 0.0)
        ns = len(self._sizes)
        line = S.line[slots]
        names = [self.series.names[x] for x in (line // ns).tolist()]
        sizes = [self._sizes[j] for j in (line % ns).tolist()]
        columns = zip(
            names, sizes, S.start[slots].tolist(), count.tolist(), total.tolist(), m2.tolist(),
            S.min[slots].tolist(), S.max[slots].tolist(), S.first[slots].tolist(), S.first_ts[slots].tolist(),
            S.last[slots].tolist(), S.last_ts[slots].tolist(), sketches, S.version[slots].tolist(),
            strict=True,
        )  # fmt: skip
        return [WindowAggregate(sensor, device, *rest) for (sensor, device), *rest in columns]

    def _sketches(self, slots: np.ndarray, groups: list[WindowGroup]) -> list[QuantileSketch]:
        """The sketch of each slot (all in the given groups)."""
        S = self._slots
        out: list[QuantileSketch] = [QuantileSketch()] * len(slots)
        end, j = S.end[slots], S.line[slots] % len(self._sizes)
        if not len(slots):
            return out
        by_key = {(group.end, group.j): group for group in groups}
        # The slots sorted by (end, size), then one slice per group: linear in slots and groups.
        order = np.lexsort((j, end))
        end, j = end[order], j[order]
        cuts = _run_starts(end, j)
        found = 0
        for a, b, e, jj in zip(cuts.tolist(), [*cuts[1:].tolist(), len(order)], end[cuts].tolist(),
                               j[cuts].tolist(), strict=True):  # fmt: skip
            group = by_key.get((e, jj))
            if group is None:
                continue
            where = order[a:b]
            chosen = slots[where]
            made = group.sketches(chosen, S.count[chosen], self._packing)
            for i, sketch in zip(where.tolist(), made, strict=True):
                out[i] = sketch
            found += len(where)
        assert found == len(slots), "every window in memory belongs to a group"
        return out

    def _in_order(self, slots: np.ndarray) -> np.ndarray:
        """The slots in emission order: by end, size, sensor, device."""
        S = self._slots
        line = S.line[slots]
        ns = len(self._sizes)
        ordered: np.ndarray = slots[np.lexsort((self.series.rank()[line // ns], line % ns, S.end[slots]))]
        return ordered


def _run_starts(*keys: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts in the (sorted) ``keys``, compared together."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)
