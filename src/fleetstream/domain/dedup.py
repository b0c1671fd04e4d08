"""Drop re-sent readings: at-least-once delivery + this = each reading counted once."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from itertools import repeat

Key = Hashable


class Deduplicator:
    """Remembers the keys of recent readings, within a horizon of event time.

    The horizon trails the newest event time seen. A key whose event time is
    inside the horizon is answered from memory; one older than the horizon
    cannot be, and :meth:`classify` hands it back as *unknown* so the caller can
    ask the durable store. Memory is bounded by the keys inside the horizon
    (plus one generation: keys are kept in generations of ``bucket_us`` of
    event time and forgotten a whole generation at a time).

    The common batch (no repeats inside it, nothing older than the horizon) is
    checked and remembered with set operations in C; only its re-sends, if any,
    cost a Python step each.

    Example:
        >>> d = Deduplicator(horizon_us=10)
        >>> d.classify([("a", "t", 100), ("a", "t", 100), ("a", "t", 101)], [100, 100, 101])
        ([0, 2], [])
        >>> d.classify([("a", "t", 100), ("a", "t", 50)], [100, 50])
        ([], [1])
    """

    def __init__(self, horizon_us: int, bucket_us: int | None = None) -> None:
        self.horizon_us = horizon_us
        self._bucket_us = bucket_us or max(1, horizon_us // 4)
        self._keys: dict[Key, int] = {}  # key -> its generation
        self._generations: dict[int, dict[Key, None]] = {}
        self.newest_ts: int | None = None
        self.duplicates_total = 0

    @property
    def floor(self) -> int | None:
        """Event time below which a key is no longer remembered."""
        return None if self.newest_ts is None else self.newest_ts - self.horizon_us

    def __len__(self) -> int:
        return len(self._keys)

    def classify(self, keys: Sequence[Key], ts: Sequence[int]) -> tuple[list[int] | None, list[int]]:
        """Split keys (with their event times) into fresh ones (now remembered) and ones below the horizon.

        Duplicates, within the keys or of anything remembered, are in neither
        list. Returns the indexes of fresh keys (``None`` when every key is
        fresh) and of unknown (too old) ones.
        """
        n = len(keys)
        if n == 0:
            return None, []
        lo, hi = min(ts), max(ts)
        floor = self.floor
        if floor is None or lo >= floor:
            members = dict.fromkeys(keys)
            if len(members) == n:  # no repeats inside the batch
                seen = self._keys.keys() & members.keys()
                fresh: list[int] | None = None
                if seen:
                    fresh = [i for i, key in enumerate(keys) if key not in seen]
                    self.duplicates_total += len(seen)
                    for key in seen:
                        del members[key]
                self._remember(members, hi)
                return fresh, []
            return self._classify_repeats(keys, hi)
        return self._classify_each(keys, ts)

    def _classify_repeats(self, keys: Sequence[Key], newest: int) -> tuple[list[int], list[int]]:
        # Repeats inside the batch (a re-send arriving with its original): each key's first place.
        first: dict[Key, int] = {}
        place = first.setdefault
        for i, key in enumerate(keys):
            place(key, i)
        seen = self._keys.keys() & first.keys()
        for key in seen:
            del first[key]
        self.duplicates_total += len(keys) - len(first)
        fresh = sorted(first.values())
        self._remember(dict.fromkeys(first), newest)
        return fresh, []

    def _remember(self, members: dict[Key, None], newest: int) -> None:
        # Every key of the batch joins the generation of its newest event time: a key may so be
        # kept up to one generation longer than its own time needs, never shorter.
        generation = newest // self._bucket_us
        self._keys.update(zip(members, repeat(generation)))
        known = self._generations.get(generation)
        if known is None:
            self._generations[generation] = members
        else:
            known.update(members)
        self._advance(newest)

    def _classify_each(self, keys: Sequence[Key], ts: Sequence[int]) -> tuple[list[int], list[int]]:
        fresh: list[int] = []
        unknown: list[int] = []
        remembered, generations, size = self._keys, self._generations, self._bucket_us
        floor = self.floor
        newest = self.newest_ts
        for i, key in enumerate(keys):
            if key in remembered:
                self.duplicates_total += 1
                continue
            t = ts[i]
            if floor is not None and t < floor:
                unknown.append(i)
                continue
            generation = t // size
            remembered[key] = generation
            members = generations.get(generation)
            if members is None:
                generations[generation] = {key: None}
            else:
                members[key] = None
            fresh.append(i)
            if newest is None or t > newest:
                newest = t
        if newest is not None:
            self._advance(newest)
        return fresh, unknown

    def forget(self, keys: Iterable[Key]) -> None:
        """Drop keys that were classified fresh but never stored (their write failed)."""
        for key in keys:
            generation = self._keys.pop(key, None)
            if generation is not None:
                self._generations[generation].pop(key, None)

    def remember(self, keys: Sequence[Key], ts: Sequence[int]) -> None:
        """Add keys known to be stored (a restart rebuilding its memory), without counting."""
        before = self.duplicates_total
        self.classify(keys, ts)
        self.duplicates_total = before

    def _advance(self, newest: int) -> None:
        if self.newest_ts is not None and newest <= self.newest_ts:
            return
        self.newest_ts = newest
        limit = (newest - self.horizon_us) // self._bucket_us
        stale = [g for g in self._generations if g < limit]
        for generation in stale:
            # map() walks the keys in C; deque(maxlen=0) only drives it.
            deque(map(self._keys.pop, self._generations.pop(generation)), maxlen=0)
