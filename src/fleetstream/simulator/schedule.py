"""When each device is due: an arithmetic schedule, no task, thread or timer per device.

Devices that repeat with the same period form a :class:`Lane`. Each member has
a phase in ``[0, period)``; its occurrences are due at
``cycle * period + phase``. Members are kept sorted by phase, so the
occurrences due in any stretch of time are contiguous slices of that list:
finding them costs a binary search, and the work per tick is proportional to
the messages due, not to the size of the fleet.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Lane(Generic[T]):
    """Members repeating every ``period_s`` seconds, each at its own phase.

    Time is seconds elapsed since the schedule began. :meth:`due` hands out
    every occurrence exactly once, in time order, however the calls split the
    time: ticks of any size give the same occurrences.

    Example:
        >>> lane = Lane(1.0, [(0.5, "a"), (0.0, "b")])
        >>> lane.due(0.0), lane.due(0.6), lane.due(2.1)
        ([], ['b', 'a'], ['b', 'a', 'b'])
    """

    def __init__(self, period_s: float, members: Sequence[tuple[float, T]], start_s: float = 0.0) -> None:
        if period_s <= 0:
            msg = f"period must be positive, got {period_s}"
            raise ValueError(msg)
        ordered = sorted(members, key=lambda member: member[0])
        if ordered and not (ordered[0][0] >= 0 and ordered[-1][0] < period_s):
            msg = f"phases must lie in [0, {period_s})"
            raise ValueError(msg)
        self.period_s = period_s
        self._phases = [phase for phase, _ in ordered]
        self._members = [member for _, member in ordered]
        self._cycle = 0  # the cycle being handed out
        self._pos = 0  # the next member of that cycle
        self._last = start_s  # the latest time handed out to (or skipped to)
        if start_s > 0:  # a lane made mid-run: nothing before ``start_s`` is due
            self._cycle = int(start_s // period_s)
            self._pos = bisect_left(self._phases, start_s - self._cycle * period_s)

    def __len__(self) -> int:
        return len(self._members)

    def due(self, elapsed_s: float) -> list[T]:
        """The occurrences due before ``elapsed_s`` not handed out yet, oldest first."""
        out: list[T] = []
        members, phases = self._members, self._phases
        self._last = max(self._last, elapsed_s)
        while members:
            bound = elapsed_s - self._cycle * self.period_s
            if bound <= 0:
                break
            hi = bisect_left(phases, bound, self._pos)
            out.extend(members[self._pos : hi])
            if hi < len(members):
                self._pos = hi
                break
            self._cycle += 1
            self._pos = 0
        return out

    def add(self, phase: float, member: T) -> None:
        """Add a member at ``phase``; it is first due at that phase of the cycle being handed out,
        or of the next one if that point is past (so within one period of being added).

        Example:
            >>> lane = Lane(1.0, [(0.5, "a"), (0.8, "z")])
            >>> lane.due(0.7), lane.add(0.2, "b"), lane.add(0.9, "c"), lane.due(1.6)
            (['a'], None, None, ['z', 'c', 'b', 'a'])
        """
        if not 0 <= phase < self.period_s:
            msg = f"phases must lie in [0, {self.period_s})"
            raise ValueError(msg)
        if not self._members:  # an empty lane stood still: catch up with the time handed out
            self._cycle = int(self._last // self.period_s)
            self._phases, self._members = [phase], [member]
            # Past its point of this cycle: its first occurrence is in the next one.
            self._pos = 1 if phase < self._last - self._cycle * self.period_s else 0
            return
        at = bisect_right(self._phases, phase)
        self._phases.insert(at, phase)
        self._members.insert(at, member)
        if at < self._pos:  # its occurrence of this cycle is past: it starts next cycle
            self._pos += 1

    def remove(self, members: set[T]) -> int:
        """Remove the members in ``members`` (compared by equality); how many were removed."""
        kept = [i for i, m in enumerate(self._members) if m not in members]
        removed = len(self._members) - len(kept)
        if removed:
            self._pos -= sum(1 for i in range(self._pos) if self._members[i] in members)
            self._phases = [self._phases[i] for i in kept]
            self._members = [self._members[i] for i in kept]
        return removed

    def skip(self, elapsed_s: float) -> int:
        """Drop the occurrences due before ``elapsed_s`` without handing them out; how many."""
        n = len(self._members)
        self._last = max(self._last, elapsed_s)
        bound = elapsed_s - self._cycle * self.period_s
        if not n or bound <= 0:
            return 0
        skipped = 0
        cycles = int(bound // self.period_s)
        if cycles:
            skipped += n - self._pos + (cycles - 1) * n
            self._cycle += cycles
            self._pos = 0
            bound = elapsed_s - self._cycle * self.period_s
        hi = bisect_left(self._phases, bound, self._pos)
        skipped += hi - self._pos
        self._pos = hi
        if hi == n:
            self._cycle += 1
            self._pos = 0
        return skipped
