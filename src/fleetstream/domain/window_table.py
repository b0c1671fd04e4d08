"""The windows of one partition in memory, found by series, size and window number.

Internal to :class:`~fleetstream.domain.windows.WindowProcessor`, which decides
the watermark and which readings are late. The table holds the windows the
other readings fall in: it opens them, folds readings in, and hands them out as
:class:`~fleetstream.domain.window_records.WindowAggregate` when they are due.

A *line* is one series at one window size (``series * len(sizes) + size
index``), and a window is a line and a window number ``u = start // size``.

Handing windows out (due versions, copies, dropping those past the lateness) is in
:mod:`~fleetstream.domain.window_emission`, a base of :class:`WindowTable`; this module
holds the table's state, opening windows, folding readings in, and snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
from typing import Any

import numpy as np

from fleetstream.domain.window_emission import WindowEmission, _run_starts
from fleetstream.domain.window_records import I64_MAX, I64_MIN
from fleetstream.domain.window_series import SeriesIndex
from fleetstream.domain.window_state import (
    STATE_FIELDS,
    Packing,
    WindowGroup,
    WindowSlots,
    array_from_state,
    array_state,
)

LINE_SPAN = 1 << 28  # window key = u * LINE_SPAN + line
_U_FAST = 1 << 34  # |u| below this keeps the key inside int64


class WindowTable(WindowEmission):
    """Every window in memory (in progress or within the allowed lateness) of one partition."""

    def __init__(self, sizes: tuple[int, ...], packing: Packing) -> None:
        self._sizes = sizes
        self._packing = packing
        self.series = SeriesIndex(max_series=LINE_SPAN // len(sizes))
        self._slot_of: dict[int, int] = {}  # window key (window number and line) -> slot
        self._slots = WindowSlots()
        self._groups: dict[tuple[int, int], WindowGroup] = {}  # (size index, start // size) -> group
        # The newest window of each line (series x size): most readings land there, found without the dict.
        self._line_u = np.full(64, I64_MIN, np.int64)
        self._line_slot = np.zeros(64, np.int64)

    def slots_for(self, line: np.ndarray, u: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The slot of each (line, window number), opening windows first seen (``values`` their first)."""
        self._grow_lines()
        slot: np.ndarray = self._line_slot[line]
        miss = np.flatnonzero(self._line_u[line] != u)
        if len(miss) == 0:
            return slot
        ml, mu = line[miss], u[miss]
        keys = self._window_keys(mu, ml)
        slot_of = self._slot_of
        found = list(map(slot_of.get, keys, repeat(-1)))
        if -1 in found:
            misses = [i for i, s in enumerate(found) if s == -1]
            # key -> its first position (walked backwards so that the first occurrence stays)
            first = dict(zip(map(keys.__getitem__, reversed(misses)), reversed(misses), strict=True))
            taken = self._slots.take(len(first))
            slot_of.update(zip(first, taken, strict=True))
            self._open(np.array(taken, np.int64), list(first), ml, mu, values[miss], list(first.values()))
            for i in misses:
                found[i] = slot_of[keys[i]]
        ms = np.array(found, np.int64)
        slot[miss] = ms
        self._remember_newest(ml, mu, ms)
        return slot

    def fold(self, slot: np.ndarray, values: np.ndarray, ts: np.ndarray) -> None:
        """Add readings, in arrival order, to the windows in the given slots."""
        # ufunc.at applies rows in order, so sums come out bit for bit the same however the log is cut.
        S = self._slots
        S.changed[slot] = True
        np.add.at(S.count, slot, 1)
        shifted = values - S.shift[slot]
        np.add.at(S.s1, slot, shifted)
        np.add.at(S.s2, slot, shifted * shifted)
        np.minimum.at(S.min, slot, values)
        np.maximum.at(S.max, slot, values)
        # Positions follow arrival order within a window: on equal event times the later arrival is last.
        np.maximum.at(S.last_ts, slot, ts)
        hit = np.flatnonzero(ts == S.last_ts[slot])
        owner = slot[hit]
        S.pick[owner] = -1
        np.maximum.at(S.pick, owner, hit)
        S.last[owner] = values[S.pick[owner]]
        earlier = np.flatnonzero(ts < S.first_ts[slot])  # a tie keeps the earlier arrival
        if len(earlier):
            slot, ts, values = slot[earlier], ts[earlier], values[earlier]
            np.minimum.at(S.first_ts, slot, ts)
            hit = np.flatnonzero(ts == S.first_ts[slot])
            owner = slot[hit]
            S.pick[owner] = I64_MAX
            np.minimum.at(S.pick, owner, hit)
            S.first[owner] = values[S.pick[owner]]

    def feed_sketches(self, blocks: list[tuple[int, int, np.ndarray]], packed: np.ndarray) -> None:
        """Add packed (slot, bucket key) pairs to the sketches of their windows' groups.

        ``blocks`` holds (size index, offset in ``packed``, window numbers) per size: the
        pairs of the device rows, then those of the fleet rows of the same readings.
        """
        for j, offset, u in blocks:
            both = packed[offset : offset + 2 * len(u)]
            lo, hi = int(u.min()), int(u.max())
            if lo == hi:
                parts: Iterable[tuple[int, np.ndarray]] = [(lo, both)]
            else:
                # One sort, then a slice per window number: a batch spanning many windows (a replay
                # of stored readings) must not scan the whole batch once per window.
                uu = np.concatenate((u, u))
                order = np.argsort(uu, kind="stable")
                cuts = _run_starts(uu[order])
                parts = zip(uu[order][cuts].tolist(), np.split(both[order], cuts[1:]), strict=True)
            for x, part in parts:
                group = self._groups.get((j, x))
                if group is None:
                    group = self._groups[(j, x)] = WindowGroup(j, (x + 1) * self._sizes[j])
                group.add(part)
                group.dirty = group.emitted

    def snapshot(self) -> dict[str, Any]:
        """The series, the windows in memory and their groups' sketches, numpy columns as raw bytes.

        Windows are renumbered 0, 1, 2... in slot order (the pairs of a group's sketches stay
        sorted); their series keep their numbers.
        """
        S = self._slots
        alive = S.alive()
        renumber = np.full(S.used, -1, np.int64)
        renumber[alive] = np.arange(len(alive))
        groups = [group.to_state(renumber, self._packing.span) for group in self._groups.values()]
        names = self.series.names
        return {
            "series": {"sensor": [s for s, _ in names], "device_id": [d for _, d in names]},
            "windows": {name: array_state(getattr(S, name)[alive]) for name, _ in STATE_FIELDS},
            "groups": groups,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`snapshot` returned, into an empty table."""
        S, sizes = self._slots, self._sizes
        if S.used:
            msg = "a snapshot can only be loaded into an empty table"
            raise ValueError(msg)
        self.series.load(state["series"]["sensor"], state["series"]["device_id"])
        self._grow_lines()
        columns = {name: array_from_state(state["windows"][name], dtype) for name, dtype in STATE_FIELDS}
        n = len(columns["start"])
        if any(len(column) != n for column in columns.values()):
            msg = "the window columns of the snapshot differ in length"
            raise ValueError(msg)
        slot = np.array(S.take(n), np.int64)  # 0 .. n-1: the slots the windows were renumbered to
        for name, column in columns.items():
            getattr(S, name)[slot] = column
        line = columns["line"]
        size = np.array(sizes, np.int64)[line % len(sizes)]
        S.end[slot] = columns["start"] + size
        u = columns["start"] // size
        keys = self._window_keys(u, line)
        S.key[:n] = keys
        self._slot_of = dict(zip(keys, range(n), strict=True))
        for group in map(WindowGroup.from_state, state["groups"]):
            self._groups[(group.j, group.end // sizes[group.j] - 1)] = group
        self._remember_newest(line, u, slot)

    # ----------------------------------------------------------------- internals

    def _window_keys(self, u: np.ndarray, line: np.ndarray) -> list[int]:
        if len(u) and int(u.min()) > -_U_FAST and int(u.max()) < _U_FAST:
            keys: list[int] = (u * LINE_SPAN + line).tolist()
            return keys
        return [a * LINE_SPAN + b for a, b in zip(u.tolist(), line.tolist(), strict=True)]

    def _open(
        self,
        slots: np.ndarray,
        keys: list[int],
        line: np.ndarray,
        u: np.ndarray,
        values: np.ndarray,
        where: list[int],
    ) -> None:
        S = self._slots
        pos = np.array(where, np.int64)
        size = np.array(self._sizes, np.int64)[line[pos] % len(self._sizes)]
        S.line[slots] = line[pos]
        S.start[slots] = u[pos] * size
        S.end[slots] = S.start[slots] + size
        S.shift[slots] = values[pos]  # the first value to arrive: the same however the log is cut
        for s, k in zip(slots.tolist(), keys, strict=True):
            S.key[s] = k

    def _remember_newest(self, line: np.ndarray, u: np.ndarray, slot: np.ndarray) -> None:
        if not len(line):  # a snapshot taken while no window was open
            return
        order = np.lexsort((u, line))
        line, u, slot = line[order], u[order], slot[order]
        last = np.flatnonzero(np.concatenate((line[1:] != line[:-1], [True])))
        line, u, slot = line[last], u[last], slot[last]
        newer = u > self._line_u[line]
        self._line_u[line[newer]] = u[newer]
        self._line_slot[line[newer]] = slot[newer]

    def _grow_lines(self) -> None:
        """Room in the per-line arrays for every series numbered so far."""
        lines = len(self.series) * len(self._sizes)
        if lines > len(self._line_u):
            grow = max(lines, 2 * len(self._line_u)) - len(self._line_u)
            self._line_u = np.concatenate((self._line_u, np.full(grow, I64_MIN, np.int64)))
            self._line_slot = np.concatenate((self._line_slot, np.zeros(grow, np.int64)))
