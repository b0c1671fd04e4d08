"""When each device is due: an arithmetic schedule, no task, thread or timer per device.

Devices that repeat with the same period form a :class:`Lane`. Each member has
a phase in ``[0, period)``; its occurrences are due at
``cycle * period + phase``. Members are kept sorted by phase, so the
occurrences due in any stretch of time are contiguous slices of that list:
finding them costs a binary search, and the work per tick is proportional to
the messages due, not to the size of the fleet.
"""

from __future__ import annotations

from bisect import bisect_left
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

    def __init__(self, period_s: float, members: Sequence[tuple[float, T]]) -> None:
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

    def __len__(self) -> int:
        return len(self._members)

    def due(self, elapsed_s: float) -> list[T]:
        """The occurrences due before ``elapsed_s`` not handed out yet, oldest first."""
        out: list[T] = []
        members, phases = self._members, self._phases
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

    def skip(self, elapsed_s: float) -> int:
        """Drop the occurrences due before ``elapsed_s`` without handing them out; how many."""
        n = len(self._members)
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
